/* What the files of background processes share (processes.c, shim.c, process_io.c): where a
 * process lives, how its output is kept, and small helpers over its directory. */
#ifndef AGENTBOX_PROCESSES_H
#define AGENTBOX_PROCESSES_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define PROCS_DIR "/.agentbox/procs"   /* on the workspace's disk; AGENTBOX_PROCS elsewhere (E2B) */
#define SEGMENT_BYTES (4LL << 20)
#define KEEP_BYTES (16LL << 20)
#define MAX_SEGMENTS 64
#define MAX_META (64 << 10)
#define KEEPALIVE_NS (2 * NSEC)
#define MAX_OWN_ARGS 16   /* a helper subcommand's arguments, with -H (watch takes two) */
#define MAX_DEADLINE_MS (366LL * 24 * 3600 * 1000)   /* a year: anything longer is a typo */

/* What `spawn` was asked for (processes.c), for the shim (shim.c). */
struct spawn_options {
    int want_stdin, own;   /* own: argv is one of this helper's subcommands */
    int cols, rows;        /* a terminal of this size, or 0 0 for pipes */
    long long deadline_ms; /* killed this long after its start; 0: never */
    const char *meta;
};

static inline void put_u32(unsigned char *p, size_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

static inline size_t get_u32(const unsigned char *p) {
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

/* processes.c */
const char *procs_dir(void);
long long unix_ns(void);
int proc_dir(const char *arg, char *dir, size_t size, int *pid);
char *slurp(const char *path, size_t max, size_t *len);
int write_small_file(const char *dir, const char *name, const char *content);
struct sockaddr_un control_address(int pid, socklen_t *len);

/* shim.c */
void run_shim(char **cmd, const struct spawn_options *options, int report);

#endif
