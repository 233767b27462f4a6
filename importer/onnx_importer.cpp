#include "importer/onnx_importer.h"

namespace gv {
Expected<ImportedModel> import_onnx(const std::string& path, const ImportOptions& options) {
  return unsupported("import_onnx: not implemented yet");
}
}  // namespace gv
