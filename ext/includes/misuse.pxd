# Refused commands, the wire-size limit and fork tracking (ext/tt_misuse.h).

cdef extern from "tt_misuse.h" nogil:
    size_t TT_MAX_COMMAND_BYTES
    const char *tt_refused(int argc, const char **argv, const size_t *lens)
    size_t tt_wire_size(int argc, const size_t *lens)
    unsigned long tt_fork_generation
    int tt_watch_forks()
    int tt_track_fd(int fd)
    void tt_untrack_fd(int fd)
