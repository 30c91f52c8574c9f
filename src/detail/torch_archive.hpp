// Checks of LibTorch's zip archives before LibTorch reads them.
//
// Threat model: a model, detector, checkpoint or tensor file may come from
// someone else (a downloaded model, a shared data set, a tampered disk).
// LibTorch 1.13 trusts such files: it allocates the sizes they declare and
// parses the TorchScript source they carry, and a mutated file can make it
// allocate gigabytes or crash (found by tests/fuzz: a 2 KB file declaring a
// 1.9 GB string; a class constant in a module's source that crashes
// torch::jit's ScriptTypeParser::parseClassConstant with a null dereference).
// These checks reject such files with a reason before LibTorch sees them.
#pragma once

#include <torch/serialize.h>

#include <cstdint>
#include <string>
#include <vector>

namespace parry::detail {

/// What is wrong with the zip structure of a torch.save / torch::save
/// archive `bytes`, or "": every record must be stored uncompressed (neither
/// writer compresses), lie inside the file with one declared size, and every
/// pickle record (*.pkl, *.debug_pkl) must hold only opcodes whose
/// arguments fit in the record and take only values the stack holds, and
/// every storage it loads must fit in its record (`<archive>/data/<key>`
/// for `<archive>/data.pkl`): LibTorch 1.13's unpickler gives a storage the
/// byte size the pickle declares, whatever the size of the record it reads.
std::string torch_archive_problem(const std::vector<char>& bytes);

/// torch_archive_problem, except that module source (*.py records) may be
/// deflated, as torch::save's writer stores it (inflated here, at most
/// 16 MiB, to exactly its declared size); and the TorchScript source of
/// every *.py record must be a module type as torch::serialize::OutputArchive writes
/// it: `class Module(Module):` followed only by `__parameters__`,
/// `__buffers__` and `__annotations__` lists and `name : Type` attributes,
/// whose types are Tensor, str, int, float, bool, NoneType, Tuple/List/
/// Dict/Optional of those, or another archive module
/// (`__torch__.___torch_mangle_N.Module`). Anything else — methods, class
/// constants, imports — is refused: Parry never writes it.
std::string output_archive_problem(const std::vector<char>& bytes);

/// What is wrong with the tensors reachable from `value` (tensors, lists,
/// tuples, dicts and objects' attributes), or "": every tensor must read
/// only elements of its own storage. LibTorch 1.13's unpickler builds a tensor
/// from the offset, sizes and strides a pickle declares without comparing them
/// with the storage it loaded, so a mutated file yields tensors that read past
/// their storage (found by fuzz_saved_state: a heap-buffer-overflow).
std::string tensor_storage_problem(const c10::IValue& value);

/// Reads the file at `path` (at most `max_bytes`), checks it with
/// output_archive_problem, loads it into `archive` and checks every value in
/// it with tensor_storage_problem.
/// @throws parry::IoError("<what> is corrupt", detail) if it cannot be read,
///   is malformed or LibTorch refuses it; "<what> not found" if it does not
///   exist; "<what> is too large" over max_bytes. `what` names the file's
///   kind for the public message ("model file", "detector file").
void load_output_archive(const std::string& path, const std::string& what, torch::serialize::InputArchive& archive,
                         int64_t max_bytes = int64_t{16} << 30);

}  // namespace parry::detail
