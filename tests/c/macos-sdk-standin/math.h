#define INFINITY __builtin_inff()
float fmaf(float x, float y, float z);
float sqrtf(float x);
float powf(float x, float y);
long lrintf(float x);
float expf(float x);
float expm1f(float x);
float tanhf(float x);
float erff(float x);
double sqrt(double x);
double log(double x);
