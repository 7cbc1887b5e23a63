/*
 * agentbox-exec: the in-container helper of agentbox.  This file is its entry point: the
 * subcommands by name, their usage, and `probe`.
 *
 * Copied into every workspace container, where it is PID 1 ("init") and the
 * wrapper for every command ("run") and file operation ("get", "put",
 * "mkdir").  Static and libc-only, so it works in any image, even one
 * without a shell.  One job a file, sharing declarations through helper.h:
 *
 *   main.c        the entry point: subcommands by name, usage, probe
 *   output.c      how a subcommand answers (fds 1 and 2, frames on a control connection, or
 *                 base64 lines), protocol error lines, and how it ends (leave)
 *   util.c        the monotonic clock, init's and run's signal set, closing inherited fds
 *   init.c        init, PID 1: reaping, the OOM killer, dropping to the workspace's user
 *   server.c      the control server: the Unix listener, workers forked ahead of the calls
 *   worker.c      a worker: the control protocol, one call after another
 *   handshake.c   the TCP channel: its key, its listener and its handshake
 *   command.c     starting a command, for run and spawn: PATH lookup, task limit, exec result
 *   run.c         run: a command in the foreground (deadline, output caps, drainer)
 *   files.c       get, put, mkdir
 *   processes.c   background processes: their table (spawn, procs, signal; processes.h)
 *   shim.c        the supervisor of one background process
 *   process_io.c  a background process's output (output) and input (input)
 *   watch.c       watch: inotify
 *   connect.c     connect: a TCP connection to a port on the workspace's loopback
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -static -s \
 *           -o agentbox-exec *.c   (agentbox.sandbox.build() compiles every .c here)
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "helper.h"

int usage(void) {
    fputs("usage: agentbox-exec init [-M MAX_MEMORY_BYTES] [-P MAX_TASKS] [-S SOCKET] [-I WORKSPACE_ID]\n"
          "                            [-K KEY_FILE -T PORT] [-U UID[:GID]]\n"
          "       agentbox-exec run [-t SECONDS] [-m MAX_BYTES] [-i] -- ARGV...\n"
          "       agentbox-exec get PATH\n"
          "       agentbox-exec put PATH [-p MODE] [-s SIZE]\n"
          "       agentbox-exec mkdir PATH\n"
          "       agentbox-exec probe\n"
          "       agentbox-exec spawn [-i] [-c COLS -r ROWS] [-j META] -- ARGV...\n"
          "       agentbox-exec procs [PID] | output PID OFFSET [-f] | signal PID SIGNUM\n"
          "       agentbox-exec input PID [-c | -w COLS ROWS]\n"
          "       agentbox-exec watch PATH [-r]\n"
          "       agentbox-exec connect PORT\n", stderr);
    return 2;
}

static int cmd_probe(int argc, char **argv) {
    struct utsname u;
    (void)argv;
    if (argc != 1)
        return usage();
    if (uname(&u) < 0)
        return report_error(errno, NULL);
    printf("agentbox-exec ok\n%s\n", u.release);
    return flush_stdout();
}

int main(int argc, char **argv) {
    /* Make sure fds 0-2 are open, so no pipe or file of ours lands on them
     * (e.g. dup2(1, 1) in the child would leave O_CLOEXEC set). */
    int fd;
    while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd < 3)
        ;
    if (fd > 2)
        close(fd);

    if (argc >= 2 && !strcmp(argv[1], "init"))
        return cmd_init(argc - 1, argv + 1);
    if (getenv("AGENTBOX_TEXT"))
        text_output();
    return argc >= 2 ? dispatch(argc - 1, argv + 1) : usage();
}

/* A subcommand, argv[0] its name: from the command line or the control socket. */
int dispatch(int argc, char **argv) {
    static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"run", cmd_run}, {"get", cmd_get}, {"put", cmd_put}, {"mkdir", cmd_mkdir}, {"probe", cmd_probe},
        {"spawn", cmd_spawn}, {"procs", cmd_procs}, {"output", cmd_output}, {"signal", cmd_signal},
        {"input", cmd_input}, {"watch", cmd_watch}, {"connect", cmd_connect},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[0], cmds[i].name))
            return cmds[i].fn(argc, argv);
    return usage();
}
