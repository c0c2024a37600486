/* Reads past the bounds it checked: the verifier must reject line 14. */
#include <vnfkit/bpf.h>

SEC("xdp")
int oob_read(struct xdp_md *ctx)
{
    unsigned char *data = (void *)(long)ctx->data;
    unsigned char *end = (void *)(long)ctx->data_end;

    if (data + 14 > end)
        return XDP_PASS;
    /* Checked 14 bytes, reads byte 100. */
    __u8 b;
    b = data[100];
    return b == 7 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
