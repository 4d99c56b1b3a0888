"""Constants shared by every track. Each is defined here once and derived elsewhere."""

import math

PHI = (1.0 + math.sqrt(5.0)) / 2.0  # golden ratio
PHI_INV = 1.0 / PHI  # = PHI - 1

# Byte vocabulary of every byte-level model: 256 byte values then the specials.
NUM_BYTES = 256
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
BYTE_VOCAB_SIZE = 259
