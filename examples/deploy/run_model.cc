// Runs a library written by `dlsys compile` from C++, with tvm-ffi alone (no Python, no
// dlsys, no TVM compiler): loads it, feeds one float32 input read from a raw file, and
// prints the first output's values, one per line.
//
//   g++ -std=c++17 run_model.cc -I$TVM_FFI/include -L$TVM_FFI/lib -ltvm_ffi \
//       -Wl,-rpath,$TVM_FFI/lib -o run_model
//   ./run_model model.so input.bin 2x20 2x5
//
// ($TVM_FFI: the apache-tvm-ffi package's folder, `python -c "import tvm_ffi, os;
// print(os.path.dirname(tvm_ffi.__file__))"`.)
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

// "2x20" -> {2, 20}
std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream parts(text);
  std::string part;
  while (std::getline(parts, part, 'x')) shape.push_back(std::stoll(part));
  return shape;
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

// A DLTensor viewing `data` (float32, compact, on the CPU).
DLTensor View(std::vector<float>& data, std::vector<int64_t>& shape) {
  DLTensor tensor{};
  tensor.data = data.data();
  tensor.device = DLDevice{kDLCPU, 0};
  tensor.ndim = static_cast<int32_t>(shape.size());
  tensor.dtype = DLDataType{kDLFloat, 32, 1};
  tensor.shape = shape.data();
  return tensor;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: run_model MODEL.so INPUT.bin INPUT_SHAPE OUTPUT_SHAPE"
                 " (shapes as 2x20)\n";
    return 2;
  }
  std::vector<int64_t> in_shape = ParseShape(argv[3]), out_shape = ParseShape(argv[4]);
  std::vector<float> input(Elements(in_shape)), output(Elements(out_shape));
  std::ifstream file(argv[2], std::ios::binary);
  if (!file.read(reinterpret_cast<char*>(input.data()), input.size() * sizeof(float))) {
    std::cerr << "cannot read " << input.size() << " float32 values from " << argv[2] << "\n";
    return 1;
  }
  try {
    tvm::ffi::Module model = tvm::ffi::Module::LoadFromFile(argv[1]);
    tvm::ffi::Function run = model->GetFunction("run").value();
    DLTensor x = View(input, in_shape), y = View(output, out_shape);
    run(&x, &y);
  } catch (const tvm::ffi::Error& error) {
    std::cerr << error.kind() << ": " << error.message() << "\n";
    return 1;
  }
  for (float value : output) std::printf("%.9g\n", value);
  return 0;
}
