#include "importer/function_inliner.h"

#include <google/protobuf/unknown_field_set.h>

#include <unordered_map>

namespace gv::onnx_import {

std::string normalize_domain(const std::string& domain) { return domain == "ai.onnx" ? "" : domain; }

namespace {

constexpr int kMaxDepth = 64;
// FunctionProto.attribute_proto (attributes with default values) is field 11 since ONNX 1.13; the protobuf classes
// installed here predate it, so it is read from the unknown fields.
constexpr int kFunctionAttributeProtoField = 11;

struct Function {
  const onnx::FunctionProto* proto = nullptr;
  std::map<std::string, int> opsets;
  std::map<std::string, onnx::AttributeProto> defaults;
};

using FunctionKey = std::pair<std::string, std::string>;  // normalized domain, name

class Inliner {
 public:
  Inliner(const std::map<std::string, int>& opsets, const std::string& path) : model_opsets_(opsets), path_(path) {}

  Status add_functions(const onnx::ModelProto& model) {
    for (const onnx::FunctionProto& f : model.functions()) {
      Function fn;
      fn.proto = &f;
      for (const auto& op : f.opset_import()) fn.opsets[normalize_domain(op.domain())] = static_cast<int>(op.version());
      const auto& unknown = f.GetReflection()->GetUnknownFields(f);
      for (int i = 0; i < unknown.field_count(); ++i) {
        const auto& uf = unknown.field(i);
        if (uf.number() != kFunctionAttributeProtoField ||
            uf.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
          continue;
        }
        onnx::AttributeProto a;
        if (!a.ParseFromString(uf.length_delimited())) {
          return corrupt("'" + path_ + "': function '" + f.name() + "' has an unreadable default attribute");
        }
        fn.defaults[a.name()] = a;
      }
      FunctionKey key{normalize_domain(f.domain()), f.name()};
      if (functions_.count(key)) {
        return corrupt("'" + path_ + "' defines the local function '" + f.domain() + "::" + f.name() + "' twice");
      }
      functions_[key] = std::move(fn);
    }
    return Status::ok();
  }

  // Appends `node` (or, when it calls a local function, the function's body) to `out`. `opsets` are those in force
  // where the node is written.
  Status emit(const onnx::NodeProto& node, const std::map<std::string, int>& opsets, int depth,
              std::vector<FlatNode>* out) {
    const std::string domain = normalize_domain(node.domain());
    auto it = functions_.find({domain, node.op_type()});
    if (it == functions_.end()) {
      FlatNode fnode;
      fnode.proto = node;
      fnode.domain = domain;
      if (auto o = opsets.find(domain); o != opsets.end()) {
        fnode.opset = o->second;
      } else if (auto m = model_opsets_.find(domain); m != model_opsets_.end()) {
        fnode.opset = m->second;
      }
      out->push_back(std::move(fnode));
      return Status::ok();
    }
    if (depth >= kMaxDepth) {
      return invalid_argument("'" + path_ + "': local function '" + node.op_type() + "' is nested more than " +
                              std::to_string(kMaxDepth) + " deep (is it recursive?)");
    }
    const Function& fn = it->second;
    const onnx::FunctionProto& f = *fn.proto;
    const std::string caller = node.name().empty() ? f.name() : node.name();
    const std::string prefix = caller + "/" + std::to_string(call_counter_++) + "/";

    if (node.input_size() > f.input_size() || node.output_size() > f.output_size()) {
      return invalid_argument("'" + path_ + "': node '" + node.name() + "' calls function '" + f.name() + "' with " +
                              std::to_string(node.input_size()) + " inputs and " + std::to_string(node.output_size()) +
                              " outputs; the function takes " + std::to_string(f.input_size()) + " and returns " +
                              std::to_string(f.output_size()));
    }
    std::unordered_map<std::string, std::string> rename;
    for (int i = 0; i < f.input_size(); ++i) rename[f.input(i)] = i < node.input_size() ? node.input(i) : "";
    for (int i = 0; i < f.output_size(); ++i) {
      rename[f.output(i)] = i < node.output_size() ? node.output(i) : prefix + f.output(i);
    }
    auto map_name = [&](const std::string& n) -> std::string {
      if (n.empty()) return n;
      auto r = rename.find(n);
      return r != rename.end() ? r->second : prefix + n;
    };

    // Attribute values: the caller's, then the function's defaults.
    std::map<std::string, const onnx::AttributeProto*> bound;
    for (const auto& a : node.attribute()) bound[a.name()] = &a;
    for (const auto& [name, a] : fn.defaults) bound.emplace(name, &a);

    std::map<std::string, int> inner_opsets = model_opsets_;
    for (const auto& [d, v] : fn.opsets) inner_opsets[d] = v;

    for (const onnx::NodeProto& body : f.node()) {
      onnx::NodeProto n = body;
      n.set_name(prefix + (body.name().empty() ? body.op_type() : body.name()));
      for (int i = 0; i < n.input_size(); ++i) n.set_input(i, map_name(body.input(i)));
      for (int i = 0; i < n.output_size(); ++i) n.set_output(i, map_name(body.output(i)));
      n.clear_attribute();
      for (const onnx::AttributeProto& a : body.attribute()) {
        if (a.ref_attr_name().empty()) {
          *n.add_attribute() = a;
          continue;
        }
        auto b = bound.find(a.ref_attr_name());
        if (b == bound.end()) continue;  // an optional attribute the caller left out
        onnx::AttributeProto copy = *b->second;
        copy.set_name(a.name());
        *n.add_attribute() = copy;
      }
      GV_RETURN_IF_ERROR(emit(n, inner_opsets, depth + 1, out));
    }
    return Status::ok();
  }

 private:
  std::map<FunctionKey, Function> functions_;
  const std::map<std::string, int>& model_opsets_;
  std::string path_;
  int64_t call_counter_ = 0;
};

}  // namespace

Expected<std::vector<FlatNode>> inline_functions(const onnx::ModelProto& model, const std::map<std::string, int>& opsets,
                                                 const std::string& path) {
  Inliner inliner(opsets, path);
  GV_RETURN_IF_ERROR(inliner.add_functions(model));
  std::vector<FlatNode> out;
  out.reserve(model.graph().node_size());
  for (const onnx::NodeProto& n : model.graph().node()) GV_RETURN_IF_ERROR(inliner.emit(n, opsets, 0, &out));
  return out;
}

}  // namespace gv::onnx_import
