# The C-level declarations of the module fastws._speedups (src_c/_speedups.pyx):
# its parts' .pxd files, in the order the .pyx includes the parts. Cython looks
# for a module's own .pxd under its package name, hence src_c/fastws/.
include "../core.pxd"
include "../transport.pxd"
include "../tls.pxd"
