// Typed node attributes (ONNX AttributeProto, minus graphs). Plain data, looked up by name.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace gv {

struct Attribute {
  enum class Kind { kInt, kFloat, kString, kInts, kFloats, kStrings, kTensor };
  Kind kind = Kind::kInt;
  int64_t i = 0;
  float f = 0.0f;
  double d = 0.0;  // the same value as f, kept in double precision for the project's own ops
  std::string s;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  std::vector<std::string> strings;
  Tensor t;
};

class Attributes {
 public:
  bool has(const std::string& name) const { return map_.count(name) != 0; }
  const Attribute* find(const std::string& name) const {
    auto it = map_.find(name);
    return it == map_.end() ? nullptr : &it->second;
  }
  int64_t get_int(const std::string& name, int64_t dflt) const {
    const Attribute* a = find(name);
    return a ? a->i : dflt;
  }
  float get_float(const std::string& name, float dflt) const {
    const Attribute* a = find(name);
    return a ? a->f : dflt;
  }
  double get_double(const std::string& name, double dflt) const {
    const Attribute* a = find(name);
    return a ? a->d : dflt;
  }
  std::string get_string(const std::string& name, const std::string& dflt) const {
    const Attribute* a = find(name);
    return a ? a->s : dflt;
  }
  std::vector<int64_t> get_ints(const std::string& name, std::vector<int64_t> dflt = {}) const {
    const Attribute* a = find(name);
    return a ? a->ints : dflt;
  }
  std::vector<float> get_floats(const std::string& name, std::vector<float> dflt = {}) const {
    const Attribute* a = find(name);
    return a ? a->floats : dflt;
  }
  const Tensor* get_tensor(const std::string& name) const {
    const Attribute* a = find(name);
    return a && a->kind == Attribute::Kind::kTensor ? &a->t : nullptr;
  }

  void set(const std::string& name, Attribute a) { map_[name] = std::move(a); }
  void set_int(const std::string& name, int64_t v) { Attribute a; a.kind = Attribute::Kind::kInt; a.i = v; map_[name] = a; }
  void set_float(const std::string& name, double v) { Attribute a; a.kind = Attribute::Kind::kFloat; a.f = static_cast<float>(v); a.d = v; map_[name] = a; }
  void set_string(const std::string& name, std::string v) { Attribute a; a.kind = Attribute::Kind::kString; a.s = std::move(v); map_[name] = a; }
  void set_ints(const std::string& name, std::vector<int64_t> v) { Attribute a; a.kind = Attribute::Kind::kInts; a.ints = std::move(v); map_[name] = a; }
  void set_floats(const std::string& name, std::vector<float> v) { Attribute a; a.kind = Attribute::Kind::kFloats; a.floats = std::move(v); map_[name] = a; }
  void set_tensor(const std::string& name, Tensor v) { Attribute a; a.kind = Attribute::Kind::kTensor; a.t = std::move(v); map_[name] = a; }
  void erase(const std::string& name) { map_.erase(name); }

  const std::map<std::string, Attribute>& all() const { return map_; }

 private:
  std::map<std::string, Attribute> map_;
};

}  // namespace gv
