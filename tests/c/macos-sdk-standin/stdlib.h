#include <stddef.h>
void *malloc(size_t size);
void *calloc(size_t n, size_t size);
void free(void *p);
char *getenv(const char *name);
