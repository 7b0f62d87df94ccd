/* The crashing test program: `crashme HOW THREADS [HOG_MIB]`.
 * HOW: segv (write to 0x10), abort, fpe (integer division by zero), or idle (no crash: the
 * benchmark's live process). THREADS-1 extra threads start; with THREADS > 1 the last one
 * crashes, the others wait in pause(). HOG_MIB MiB are allocated and touched first.
 * $CRASHME_TID_FILE, if set, receives the crashing thread's id; the program prints "ready"
 * once every thread is up. With $CRASHME_DEEP set, the waiting threads wait below a 128 KiB
 * stack frame (big stacks for the size-limit tests), and the crash waits until every one is
 * down there, so the stacks are as big whatever the load. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_barrier_t ready, deep;
static int deep_mode;
static volatile int zero = 0, numerator = 7;
static const char *how = "segv";

static void write_tid(void) {
    const char *path = getenv("CRASHME_TID_FILE");
    if (path == NULL) return;
    FILE *f = fopen(path, "w");
    if (f == NULL) return;
    fprintf(f, "%ld\n", (long)syscall(SYS_gettid));
    fclose(f);
}

__attribute__((noinline)) void crash_here(void) {
    write_tid();
    if (strcmp(how, "segv") == 0) {
        *(volatile int *)0x10 = 1;
    } else if (strcmp(how, "abort") == 0) {
        abort();
    } else if (strcmp(how, "fpe") == 0) {
        printf("%d\n", numerator / zero);
    }
    for (;;) pause();
}

__attribute__((noinline)) static void wait_deep(void) {
    volatile char frame[128 << 10];
    for (size_t i = 0; i < sizeof frame; i += 512) frame[i] = (char)i;
    pthread_barrier_wait(&deep);
    for (;;) pause();
}

static void *idle_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&ready);
    if (deep_mode) wait_deep();
    for (;;) pause();
    return NULL;
}

static void *crash_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&ready);
    if (deep_mode) pthread_barrier_wait(&deep);
    crash_here();
    return NULL;
}

int main(int argc, char **argv) {
    how = argc > 1 ? argv[1] : "segv";
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    long hog = argc > 3 ? atol(argv[3]) : 0;
    if (hog > 0) {
        char *mem = malloc((size_t)hog << 20);
        if (mem == NULL) return 2;
        for (long i = 0; i < (hog << 20); i += 4096) mem[i] = (char)i;
    }
    if (threads < 1) threads = 1;
    pthread_barrier_init(&ready, NULL, (unsigned)threads);
    deep_mode = getenv("CRASHME_DEEP") != NULL && threads > 1;
    if (deep_mode) pthread_barrier_init(&deep, NULL, (unsigned)(threads - 1));
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, i == threads - 1 ? crash_thread : idle_thread, NULL);
    }
    if (threads > 1) pthread_barrier_wait(&ready);
    printf("ready\n");
    fflush(stdout);
    if (threads == 1) crash_here();
    for (;;) pause();
}
