/* The floor of `tinytown bench --callgrind`: the least a client can do to
 * send one message, a blocking hiredis loop of RPUSH with a pre-encoded
 * payload. Usage: floor <unix socket path> <key> <payload file> <count>. */
#include <stdio.h>
#include <stdlib.h>
#include <hiredis/hiredis.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SOCKET KEY PAYLOAD_FILE COUNT\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (f == NULL) {
        perror(argv[3]);
        return 1;
    }
    static char payload[1 << 20];
    size_t len = fread(payload, 1, sizeof payload, f);
    fclose(f);
    long count = strtol(argv[4], NULL, 10);
    redisContext *c = redisConnectUnix(argv[1]);
    if (c == NULL || c->err) {
        fprintf(stderr, "connect: %s\n", c ? c->errstr : "out of memory");
        return 1;
    }
    for (long i = 0; i < count; i++) {
        redisReply *reply = redisCommand(c, "RPUSH %s %b", argv[2], payload, len);
        if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
            fprintf(stderr, "RPUSH failed: %s\n", reply ? reply->str : c->errstr);
            return 1;
        }
        freeReplyObject(reply);
    }
    redisFree(c);
    return 0;
}
