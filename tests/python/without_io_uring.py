"""Runs a command where the kernel refuses io_uring, as under Docker's default
seccomp profile: a filter fails io_uring_setup(2) with EPERM, and every other
system call runs as usual. Used by tests/process.rs:
    python3 tests/python/without_io_uring.py [exec] PROGRAM ARGS...
(a leading "exec" is skipped, for the tests' `sh -c "<prefix> exec ..."`)."""
import ctypes
import os
import struct
import sys

IO_URING_SETUP = 425  # the same number on x86_64 and aarch64
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW, EPERM = 0x00050000, 0x7FFF0000, 1
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06

program = [
    (BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
    (BPF_JEQ_K, 0, 1, IO_URING_SETUP),  # io_uring_setup? next : skip one
    (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
]
filters = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
buffer = ctypes.create_string_buffer(filters)
fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buffer))
fprog_buffer = ctypes.create_string_buffer(fprog)

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): errno {ctypes.get_errno()}")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog_buffer, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_SECCOMP): errno {ctypes.get_errno()}")
args = sys.argv[1:]
if args and args[0] == "exec":
    args = args[1:]
os.execv(args[0], args)
