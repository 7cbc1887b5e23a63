/*
 * Background processes: started by one call, then found again by PID by any later one.
 *
 * `spawn` forks a supervisor ("shim") that leaves the call's session and
 * starts the command in a process group of its own, with pipes or a
 * terminal.  Everything about a process lives in the workspace, under
 * PROCS_DIR/<pid>/, so it outlives the call, the host's connection and the
 * agentbox server itself:
 *
 *   meta        what the host said about it at the start (JSON, opaque here)
 *   out.<N>     its output from offset N (bytes of output before it): records
 *               u8 stream (1 stdout, 2 stderr, 3 terminal), u32 length
 *               (big-endian), data.  A new segment every SEGMENT_BYTES; the
 *               oldest go while the newer ones hold KEEP_BYTES.
 *   exit        "<exit code or -1> <signal or 0> <unix ns>[ stopped| timeout]", once it ended
 *               ("timeout": its deadline passed and the shim killed its group)
 *
 * The directory is on the workspace's own disk, so output counts against its
 * size like any other file.  The shim listens for stdin, closing stdin and
 * terminal sizes on an abstract socket named after that directory, not on a
 * file in it: under gVisor a socket file on a bind-mounted disk is a host
 * socket, and a sandbox holding one cannot be checkpointed (pause).  The subcommands the host calls:
 *
 *   spawn [-i] [-c COLS -r ROWS] [-t MS] [-H] [-j META] -- ARGV   "OK <pid>" or "E <ERRNO> <why>"
 *                   -t: killed (its whole group) MS milliseconds after it started, by the shim,
 *                   so a deadline holds whoever asked for it and whether or not they are still
 *                   there; -H: ARGV is one of this helper's own subcommands (watch, say), run
 *                   by this very binary wherever the provider put it
 *   procs [PID]     per process "P <pid> <meta bytes> <exit bytes> <alive>\n", meta, exit
 *   output PID OFFSET [-f]   "S <first offset sent>\n", then records as above;
 *                   stream 0 is the end ("exit" content), 8 a jump past output
 *                   rotated away meanwhile (data: the offset it goes on from), 9 a keep-alive
 *   signal PID SIGNUM         to its whole group; SIGKILL until the group is empty
 *   input PID [-c | -w COLS ROWS]   stdin (from our stdin) | close it | resize
 *
 * This file: the directory's helpers and the table (spawn, procs, signal, and marking what an
 * earlier boot left as stopped); shim.c: the supervisor; process_io.c: output and input.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"
#include "processes.h"

const char *procs_dir(void) {
    const char *dir = getenv("AGENTBOX_PROCS");
    return dir && *dir ? dir : PROCS_DIR;
}

long long unix_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * NSEC + ts.tv_nsec;
}

/* A process's directory, or -1 (and the error answered) when `arg` names none. */
int proc_dir(const char *arg, char *dir, size_t size, int *pid) {
    char *end;
    long n = strtol(arg, &end, 10);
    struct stat st;
    if (*arg == '\0' || *end || n <= 0 || n > 1 << 30)
        return report_error(EINVAL, "not a process id"), -1;
    snprintf(dir, size, "%s/%ld", procs_dir(), n);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return report_error(ENOENT, "no such process"), -1;
    *pid = (int)n;
    return 0;
}

/* Up to `max` bytes of a small file into a malloc'd buffer; NULL when it is missing. */
char *slurp(const char *path, size_t max, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char *buf = malloc(max + 1);
    size_t got = 0;
    ssize_t n;
    while (buf && got < max && ((n = read(fd, buf + got, max - got)) > 0 || (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    close(fd);
    if (buf)
        buf[got] = '\0';
    *len = got;
    return buf;
}

int write_small_file(const char *dir, const char *name, const char *content) {
    char tmp[256], path[256];
    snprintf(tmp, sizeof tmp, "%s/.%s", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    int bad = write_all(fd, content, strlen(content)) < 0;
    close(fd);
    return bad ? -1 : rename(tmp, path);
}

/* The shim's abstract socket ("\0<procs dir>/<pid>/ctl"); its length in *len. */
struct sockaddr_un control_address(int pid, socklen_t *len) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "%s/%d/ctl", procs_dir(), pid);
    n = n < (int)sizeof addr.sun_path - 1 ? n : (int)sizeof addr.sun_path - 2;
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    return addr;
}

/* ---- spawn ---------------------------------------------------------------------- */

int cmd_spawn(int argc, char **argv) {
    int opt, want_stdin = 0, own = 0;
    long cols = 0, rows = 0;
    long long deadline_ms = 0;
    const char *meta = "{}";
    optind = 1;
    while ((opt = getopt(argc, argv, "+ic:r:t:Hj:")) != -1) {
        if (opt == 'i')
            want_stdin = 1;
        else if (opt == 'H')
            own = 1;
        else if (opt == 't')
            deadline_ms = strtoll(optarg, NULL, 10);
        else if (opt == 'c')
            cols = strtol(optarg, NULL, 10);
        else if (opt == 'r')
            rows = strtol(optarg, NULL, 10);
        else if (opt == 'j' && strlen(optarg) <= MAX_META)
            meta = optarg;
        else
            return usage();
    }
    if (optind >= argc || cols < 0 || rows < 0 || cols > 65535 || rows > 65535 || (cols > 0) != (rows > 0) ||
        deadline_ms < 0 || deadline_ms > MAX_DEADLINE_MS || (own && argc - optind > MAX_OWN_ARGS))
        return usage();
    struct stat st;
    if (stat(procs_dir(), &st) < 0 || !S_ISDIR(st.st_mode))
        return report_error(ENOTSUP, "this workspace has no process table (it was made before agentbox had one)");
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0)
        return report_error(errno, NULL);
    fflush(stdout);   /* nothing buffered may be written twice */
    pid_t shim = fork();
    if (shim < 0)
        return report_error(errno, "starting the process supervisor");
    if (shim == 0) {
        close(report[0]);
        struct spawn_options options = {.want_stdin = want_stdin, .own = own, .cols = (int)cols, .rows = (int)rows,
                                         .deadline_ms = deadline_ms, .meta = meta};
        run_shim(argv + optind, &options, report[1]);
    }
    close(report[1]);
    char answer[512];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof answer - 1 && ((n = read(report[0], answer + got, sizeof answer - 1 - got)) > 0 ||
                                       (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    answer[got] = '\0';
    waitpid(shim, NULL, WNOHANG);
    if (got == 0)
        return report_error(EIO, "the process supervisor died while starting the process");
    fputs(answer, stdout);
    return flush_stdout();
}

/* ---- the table ---------------------------------------------------------------- */

static int describe(int pid) {
    char dir[128], path[192];
    size_t meta_len = 0, exit_len = 0;
    snprintf(dir, sizeof dir, "%s/%d", procs_dir(), pid);
    snprintf(path, sizeof path, "%s/meta", dir);
    char *meta = slurp(path, MAX_META, &meta_len);
    snprintf(path, sizeof path, "%s/exit", dir);
    char *ended = slurp(path, 256, &exit_len);
    if (!meta) {   /* being made or removed right now */
        free(ended);
        return 0;
    }
    printf("P %d %zu %zu %d\n", pid, meta_len, exit_len, !ended && kill(pid, 0) == 0);
    fwrite(meta, 1, meta_len, stdout);
    if (ended)
        fwrite(ended, 1, exit_len, stdout);
    free(meta);
    free(ended);
    return 0;
}

int cmd_procs(int argc, char **argv) {
    if (argc > 2)
        return usage();
    if (argc == 2) {
        char dir[128];
        int pid;
        if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
            return 1;
        describe(pid);
        return flush_stdout();
    }
    DIR *d = opendir(procs_dir());
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (pid > 0 && !*end)
            describe((int)pid);
    }
    if (d)
        closedir(d);
    return flush_stdout();
}

/* At boot: whatever has no "exit" ended when the workspace stopped. */
void procs_mark_stopped(void) {
    DIR *d = opendir(procs_dir());
    struct dirent *de;
    char dir[300], path[320], line[96];
    snprintf(line, sizeof line, "-1 %d %lld stopped\n", SIGKILL, unix_ns());
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(dir, sizeof dir, "%s/%s", procs_dir(), de->d_name);
        snprintf(path, sizeof path, "%s/exit", dir);
        if (access(path, F_OK) != 0)
            write_small_file(dir, "exit", line);
    }
    if (d)
        closedir(d);
}

/* ---- signals ------------------------------------------------------------------- */

int cmd_signal(int argc, char **argv) {
    char dir[128], path[192];
    int pid;
    if (argc != 3)
        return usage();
    if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
        return 1;
    int sig = atoi(argv[2]);
    snprintf(path, sizeof path, "%s/exit", dir);
    if (sig <= 0 || sig >= 65)
        return report_error(EINVAL, "not a signal number");
    if (access(path, F_OK) == 0)
        return report_error(ESRCH, "the process has already exited");
    if (kill(-pid, sig) < 0 && kill(pid, sig) < 0)
        return report_error(errno, NULL);
    if (sig == SIGKILL) {
        /* Again until the group is empty: under gVisor a member inside fork() when the signal
         * lands can still add a child that never saw it (see kill_group in run.c). */
        long long give_up = now_ns() + 5 * NSEC;
        struct timespec pause = {0, 1000000};
        while (kill(-pid, SIGKILL) == 0 && now_ns() < give_up)
            nanosleep(&pause, NULL);
        /* ... and until its supervisor has written how it ended, so the next look says so. */
        while (access(path, F_OK) != 0 && now_ns() < give_up)
            nanosleep(&pause, NULL);
    }
    puts("OK");
    return flush_stdout();
}
