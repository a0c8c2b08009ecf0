"""AI CPU communication operators (HCCL custom ops): op-info library, ACL runtime, Hcomm device API,
task engines (JAX and reference) and results. See ``spec/aicpu_comm_op.md``."""
