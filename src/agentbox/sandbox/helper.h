/* What the helper's files share (main.c lists them), by the file that defines it. */
#ifndef AGENTBOX_HELPER_H
#define AGENTBOX_HELPER_H

#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#define BUFSZ 65536
#define NSEC 1000000000LL
#define CHANNEL_KEY_BYTES 32

/* main.c: the subcommands by name, from the command line or a control connection. */
int usage(void);
int dispatch(int argc, char **argv);

/* output.c: how a subcommand answers, and how it ends. */
/* The control connection a subcommand answers on, or -1 under `docker exec`. */
extern int frame_fd;
const char *errno_name(int e);
int report_error(int e, const char *msg);
int flush_stdout(void);
int write_all(int fd, const char *buf, size_t len);
int read_exactly(int fd, char *buf, size_t len);
int send_frame(int fd, int kind, const void *data, size_t len);
int emit(int stream, const char *buf, size_t len);
void text_output(void);
FILE *framed_stream(int stream);
void leave(int code);

/* util.c */
long long now_ns(void);
sigset_t term_and_chld(void);
void close_other_fds(int keep1, int keep2, int keep3);

/* init.c: PID 1. */
extern unsigned char channel_key[CHANNEL_KEY_BYTES];
int cmd_init(int argc, char **argv);

/* server.c: the control server. */
int listen_on(const char *path);
pid_t start_server(int s, int t, const char *id);

/* worker.c: a worker of the control server. */
extern sigjmp_buf *call_done;
extern pid_t worker_pid;
extern int keep_worker;
void worker(const char *id, int unix_l, int tcp_l, int server, pid_t server_pid);

/* handshake.c: the helper channel over TCP. */
int load_channel_key(const char *path, long workload, unsigned char key[CHANNEL_KEY_BYTES]);
int listen_tcp(int port);
int handshake(int c, const unsigned char key[CHANNEL_KEY_BYTES], const char *id);
void announce_address(void);

/* command.c: starting a command, for run and spawn. */
void apply_task_limit(void);
const char *command_path(const char *name, char *buf, size_t size);
int exec_result(int ep, pid_t child);

/* run.c */
int cmd_run(int argc, char **argv);

/* files.c */
int cmd_get(int argc, char **argv);
int cmd_put(int argc, char **argv);
int cmd_mkdir(int argc, char **argv);

/* processes.c, process_io.c: background processes that outlive the call that started them
 * (what only their files share is in processes.h). */
int cmd_spawn(int argc, char **argv);
int cmd_procs(int argc, char **argv);
int cmd_signal(int argc, char **argv);
void procs_mark_stopped(void);
int cmd_output(int argc, char **argv);
int cmd_input(int argc, char **argv);

/* watch.c */
int cmd_watch(int argc, char **argv);

/* connect.c */
int cmd_connect(int argc, char **argv);

#endif
