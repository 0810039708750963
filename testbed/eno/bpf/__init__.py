"""The in-kernel ENO datapath: a BPF sock_ops program beside the NFQUEUE hook."""
