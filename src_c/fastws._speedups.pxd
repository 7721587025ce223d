# The C-level declarations of the module fastws._speedups (see _speedups.pyx); the
# dotted name is how Cython finds the .pxd of a module built from a .pyx outside
# its package. Its parts' .pxd files, in the order the .pyx includes the parts:
include "core.pxd"
include "transport.pxd"
