# POSIX calls of SyncConnection (sync_connection.pyx) that Cython's own
# libc/posix .pxd files do not declare: poll(2), shutdown(2), errno through
# functions, and a coarse monotonic clock.

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)

# errno through functions: Cython would make a local of a cimported errno
# assigned to inside a function.
cdef extern from *:
    """
    #include <errno.h>
    static inline void tt_clear_errno(void) { errno = 0; }
    static inline int tt_errno(void) { return errno; }
    """
    void tt_clear_errno() noexcept nogil
    int tt_errno() noexcept nogil

# A clock read costs a few ns with the coarse clock (no syscall): enough to
# tell a connection used a moment ago from one that sat idle.
cdef extern from *:
    """
    #include <time.h>
    static inline double tt_coarse_now(void) {
        struct timespec ts;
    #ifdef CLOCK_MONOTONIC_COARSE
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    #else
        clock_gettime(CLOCK_MONOTONIC, &ts);
    #endif
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    """
    double tt_coarse_now() noexcept nogil

cdef extern from "<sys/socket.h>" nogil:
    enum:
        SHUT_RDWR
    int shutdown(int fd, int how)
