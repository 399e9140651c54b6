"""What users' own tests may want too: a protocol-faithful fake Infinity server that can misbehave on purpose."""
