// SPDX-License-Identifier: GPL-2.0
/*
 * memhog: take memory in the guest, for pressure and OOM tests.
 *
 * Usage: memhog <MiB> [hold_seconds]
 * Allocates <MiB> MiB in 1 MiB chunks and writes every page of each chunk,
 * so the memory is really backed; stops early if malloc fails. Prints
 * "memhog: got <n> MiB", sleeps hold_seconds (default 0) and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1024 * 1024)

int main(int argc, char **argv)
{
	long want, hold = 0, got = 0, page = sysconf(_SC_PAGESIZE);

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: memhog <MiB> [hold_seconds]\n");
		return 2;
	}
	want = strtol(argv[1], NULL, 0);
	if (argc == 3)
		hold = strtol(argv[2], NULL, 0);
	if (page <= 0)
		page = 4096;

	for (got = 0; got < want; got++) {
		char *chunk = malloc(CHUNK);
		long off;

		if (!chunk)
			break;
		for (off = 0; off < CHUNK; off += page)
			chunk[off] = (char)(off / page + 1);
	}
	printf("memhog: got %ld MiB\n", got);
	fflush(stdout);
	if (hold > 0)
		sleep((unsigned int)hold);
	return 0;
}
