/* What agentbox-exec.c and processes.c share: output framing and small utilities. */
#ifndef AGENTBOX_HELPER_H
#define AGENTBOX_HELPER_H

#include <stddef.h>
#include <sys/types.h>

#define BUFSZ 65536
#define NSEC 1000000000LL

/* The control connection a subcommand answers on, or -1 under `docker exec`. */
extern int frame_fd;

int usage(void);
const char *errno_name(int e);
int report_error(int e, const char *msg);
int flush_stdout(void);
int write_all(int fd, const char *buf, size_t len);
int send_frame(int fd, int kind, const void *data, size_t len);
int emit(int stream, const char *buf, size_t len);
int read_exactly(int fd, char *buf, size_t len);
long long now_ns(void);
void close_other_fds(int keep1, int keep2, int keep3);
void apply_task_limit(void);
const char *command_path(const char *name, char *buf, size_t size);
int exec_result(int ep, pid_t child);

/* processes.c: background processes that outlive the call that started them. */
int cmd_spawn(int argc, char **argv);
int cmd_procs(int argc, char **argv);
int cmd_output(int argc, char **argv);
int cmd_signal(int argc, char **argv);
int cmd_input(int argc, char **argv);
void procs_mark_stopped(void);

/* watch.c */
int cmd_watch(int argc, char **argv);

/* connect.c */
int cmd_connect(int argc, char **argv);

/* handshake.c: the helper channel over TCP */
#define CHANNEL_KEY_BYTES 32
int load_channel_key(const char *path, long workload, unsigned char key[CHANNEL_KEY_BYTES]);
int listen_tcp(int port);
int handshake(int c, const unsigned char key[CHANNEL_KEY_BYTES], const char *id);
void announce_address(void);

#endif
