"""fp16 and int8 variants of an fp32 artifact."""
