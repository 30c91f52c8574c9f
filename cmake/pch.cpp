// Translation unit that owns the precompiled LibTorch header shared by Parry's
// family libraries (CMake target parry_pch).
