#define INFINITY __builtin_inff()
float fmaf(float x, float y, float z);
float sqrtf(float x);
float powf(float x, float y);
long lrintf(float x);
