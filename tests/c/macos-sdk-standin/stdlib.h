#include <stddef.h>
void *malloc(size_t size);
void free(void *p);
char *getenv(const char *name);
