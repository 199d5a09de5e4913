"""Tools over the kernels that are not part of the recurrence library: the sm_90 compile check."""
