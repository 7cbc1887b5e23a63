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
void run_shim(char **cmd, int want_stdin, int cols, int rows, const char *meta, int report);

#endif
