"""The CI client: submit a checkpoint to a running ppr-audit service and gate on the
report. It must not import torch (nor the engine): it speaks HTTP and reads JSON."""
