// detect: run a dexport TorchScript detector artifact (model.pt) on binary PPM images,
// without Python, and print the detections as JSON on stdout.
//
//   detect MODEL.pt IMAGE.ppm [IMAGE2.ppm ...]
//
// The images are batched as dexport.load does in Python (stack_inputs in
// dexport/ir/dialects/detection_io.py): each one f32[3, H, W], pixel values 0..255 in
// the zoo's BGR channel order, at the top-left of a zero canvas of the batch's largest
// height and width; image_sizes and output_sizes are the (h, w) of every image. The
// module returns the detections of all images concatenated, plus `counts` (detections
// per image), which splits them back.
//
// Output: [{"image": i, "detections": [{"box": [x1, y1, x2, y2], "score": s, "class": k}, ...]}, ...]
// Exit codes: 0 done; 1 the model failed to load or run; 2 bad arguments or images.
#include <torch/script.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// A problem with what the user passed (arguments, image files): exit code 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A problem with the model or what it returned: exit code 1.
struct ModelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// Reads the header of a binary PPM ("P6", width, height, maxval, separated by whitespace
// and '#' comments that run to the end of the line).
class PpmHeader {
 public:
  PpmHeader(const std::string& data, const std::string& path) : data_(data), path_(path) {}

  // The next header number; `what` names it in errors.
  std::int64_t number(const char* what) {
    skip_space_and_comments();
    if (pos_ >= data_.size()) fail(std::string("the header ends before the ") + what);
    if (data_[pos_] < '0' || data_[pos_] > '9')
      fail(std::string("expected the ") + what + " (a decimal number), found '" + printable(data_[pos_]) + "'");
    std::int64_t value = 0;
    while (pos_ < data_.size() && data_[pos_] >= '0' && data_[pos_] <= '9') {
      value = value * 10 + (data_[pos_++] - '0');
      if (value > 1'000'000) fail(std::string("the ") + what + " is larger than 1000000");
    }
    return value;
  }

  // After maxval exactly one whitespace character precedes the pixels.
  std::size_t pixel_offset() {
    if (pos_ >= data_.size() || !is_space(data_[pos_])) fail("expected one whitespace character after maxval");
    return pos_ + 1;
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw InputError(path_ + ": not a valid binary PPM (P6) file: " + message);
  }

 private:
  void skip_space_and_comments() {
    while (pos_ < data_.size()) {
      if (is_space(data_[pos_])) {
        ++pos_;
      } else if (data_[pos_] == '#') {
        while (pos_ < data_.size() && data_[pos_] != '\n' && data_[pos_] != '\r') ++pos_;
      } else {
        return;
      }
    }
  }

  static std::string printable(char c) {
    if (c >= 32 && c < 127) return std::string(1, c);
    char code[8];
    std::snprintf(code, sizeof code, "\\x%02x", static_cast<unsigned char>(c));
    return code;
  }

  const std::string& data_;
  const std::string& path_;
  std::size_t pos_ = 2;  // after the magic number
};

// One PPM file as the zoo's input: f32[3, H, W], 0..255, channels in BGR order (PPM
// stores RGB; the zoo's pixel_mean and training images are BGR, like detectron2's).
torch::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open the file");
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError(path + ": cannot read the file");

  PpmHeader header(data, path);
  if (data.size() < 2 || data[0] != 'P') header.fail("it does not start with the magic number P6");
  if (data[1] == '3') header.fail("it is an ASCII PPM (P3); save it as binary PPM (P6)");
  if (data[1] != '6') header.fail(std::string("magic number P") + data[1] + ", expected P6 (8-bit RGB)");
  const std::int64_t width = header.number("width");
  const std::int64_t height = header.number("height");
  const std::int64_t maxval = header.number("maxval");
  const std::size_t offset = header.pixel_offset();
  if (width < 1 || height < 1) header.fail("the image is empty (" + std::to_string(width) + "x" +
                                           std::to_string(height) + ")");
  if (maxval != 255) header.fail("maxval is " + std::to_string(maxval) + "; only 8-bit images (maxval 255) are read");
  const std::size_t expected = static_cast<std::size_t>(width * height * 3);
  if (data.size() - offset < expected)
    header.fail("the pixel data is truncated: " + std::to_string(width) + "x" + std::to_string(height) + " needs " +
                std::to_string(expected) + " bytes, the file has " + std::to_string(data.size() - offset));

  auto rgb = torch::from_blob(const_cast<char*>(data.data() + offset), {height, width, 3}, torch::kUInt8);
  return rgb.permute({2, 0, 1}).flip({0}).to(torch::kFloat32).contiguous();
}

struct Batch {
  torch::Tensor images;        // f32[N, 3, H, W]
  torch::Tensor image_sizes;   // i64[N, 2]
  torch::Tensor output_sizes;  // i64[N, 2]
};

// Pads the images bottom/right with zeros to the largest height and width.
Batch stack_images(const std::vector<torch::Tensor>& images) {
  std::int64_t max_h = 0, max_w = 0;
  for (const auto& image : images) {
    max_h = std::max(max_h, image.size(1));
    max_w = std::max(max_w, image.size(2));
  }
  const auto n = static_cast<std::int64_t>(images.size());
  Batch batch{torch::zeros({n, 3, max_h, max_w}, torch::kFloat32), torch::empty({n, 2}, torch::kInt64), {}};
  auto sizes = batch.image_sizes.accessor<std::int64_t, 2>();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& image = images[i];
    batch.images[i].narrow(1, 0, image.size(1)).narrow(2, 0, image.size(2)).copy_(image);
    sizes[i][0] = image.size(1);
    sizes[i][1] = image.size(2);
  }
  batch.output_sizes = batch.image_sizes.clone();  // results at each image's own size
  return batch;
}

torch::Tensor output_field(const c10::Dict<c10::IValue, c10::IValue>& outputs, const std::string& key) {
  auto found = outputs.find(key);
  if (found == outputs.end())
    throw ModelError("the model's output has no '" + key +
                     "': detect runs detectors exported by dexport (boxes, scores, classes, counts)");
  if (!found->value().isTensor()) throw ModelError("the model's output '" + key + "' is not a tensor");
  return found->value().toTensor();
}

// c10::Error's message without the C++ stack trace libtorch appends to what().
std::string what_without_backtrace(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) return error->what_without_backtrace();
  return e.what();
}

void print_float(double value) {
  if (std::isfinite(value)) {
    std::printf("%.9g", value);
  } else {
    std::printf("null");  // JSON has no NaN or infinity
  }
}

int run(int argc, char** argv) {
  if (argc < 3) {
    throw InputError(std::string("usage: ") + (argc > 0 ? argv[0] : "detect") +
                     " MODEL.pt IMAGE.ppm [IMAGE2.ppm ...]");
  }
  std::vector<torch::Tensor> images;
  for (int i = 2; i < argc; ++i) images.push_back(read_ppm(argv[i]));  // bad images fail before the load

  torch::jit::script::Module module;
  try {
    module = torch::jit::load(argv[1]);
  } catch (const std::exception& e) {  // c10::Error, or torch::jit::ErrorReport for code it cannot compile
    std::string message = what_without_backtrace(e);
    if (message.find("Unknown builtin op") != std::string::npos)
      message += "\n(the model calls an op that libtorch alone does not have: one registered from Python or by "
                 "a C++ extension, which this program would have to link)";
    throw ModelError(std::string(argv[1]) + ": cannot load the TorchScript model: " + message);
  }
  module.eval();

  const Batch batch = stack_images(images);
  c10::IValue result;
  try {
    torch::NoGradGuard no_grad;
    result = module.forward({batch.images, batch.image_sizes, batch.output_sizes});
  } catch (const std::exception& e) {
    throw ModelError(std::string("the model failed on the batch: ") + what_without_backtrace(e));
  }
  if (!result.isGenericDict())
    throw ModelError("the model returned " + result.tagKind() + ", expected a dict of tensors");
  const auto outputs = result.toGenericDict();

  const auto boxes = output_field(outputs, "boxes").to(torch::kFloat64).contiguous();
  const auto scores = output_field(outputs, "scores").to(torch::kFloat64).contiguous();
  const auto classes = output_field(outputs, "classes").to(torch::kInt64).contiguous();
  const auto counts = output_field(outputs, "counts").to(torch::kInt64).contiguous();
  const std::int64_t total = scores.dim() == 1 ? scores.size(0) : -1;
  if (total < 0 || boxes.dim() != 2 || boxes.size(0) != total || boxes.size(1) != 4 || classes.dim() != 1 ||
      classes.size(0) != total)
    throw ModelError("the model's boxes, scores and classes do not have shapes [D, 4], [D], [D]");
  if (counts.dim() != 1 || counts.size(0) != batch.images.size(0) || counts.sum().item<std::int64_t>() != total ||
      counts.min().item<std::int64_t>() < 0)
    throw ModelError("the model's counts are not one count per image adding up to the detections");

  const auto box = boxes.accessor<double, 2>();
  const auto score = scores.accessor<double, 1>();
  const auto cls = classes.accessor<std::int64_t, 1>();
  const auto count = counts.accessor<std::int64_t, 1>();
  std::int64_t row = 0;
  std::printf("[\n");
  for (std::int64_t i = 0; i < counts.size(0); ++i) {
    std::printf("  {\"image\": %lld, \"detections\": [", static_cast<long long>(i));
    for (std::int64_t k = 0; k < count[i]; ++k, ++row) {
      std::printf("%s\n    {\"box\": [", k ? "," : "");
      for (int j = 0; j < 4; ++j) {
        if (j) std::printf(", ");
        print_float(box[row][j]);
      }
      std::printf("], \"score\": ");
      print_float(score[row]);
      std::printf(", \"class\": %lld}", static_cast<long long>(cls[row]));
    }
    std::printf("%s]}%s\n", count[i] ? "\n  " : "", i + 1 < counts.size(0) ? "," : "");
  }
  std::printf("]\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const InputError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
