#ifndef DL_TRACE_H
#define DL_TRACE_H
#include <stdio.h>

#include "model.h"

int dl_trace_main(const struct dl_shape *a2b, const struct dl_shape *b2a, uint64_t seed,
		  FILE *in, FILE *out);
#endif
