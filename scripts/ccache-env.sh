# Sourced by the build scripts: compiler-cache settings that make ccache work
# here. Without them ccache caches nothing: every translation unit uses the
# precompiled LibTorch header, which ccache refuses unless told that its
# defines and timestamps may be ignored ("Could not use precompiled header"
# for 261 of 272 compiles, measured). With a base directory and no hashed
# working directory, a fresh clone elsewhere (CI) hits the entries of the
# checkout that built the same sources. Each setting keeps a value the
# environment already gives.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"  # sanitizer builds use -g
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-10G}"  # a normal and a clang build of the whole tree fit
