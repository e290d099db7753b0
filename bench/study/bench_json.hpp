#pragma once
// Reading Google Benchmark's JSON output (--benchmark_format=json or
// --benchmark_out_format=json) without a JSON dependency: a small parser for the JSON
// grammar (RFC 8259; \u escapes outside ASCII are kept as '?'), and the extraction of the
// fields the study plots from each entry of "benchmarks".

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ssmax::study {

/// A parsed JSON value: null, boolean, number, string, array or object.
struct json {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<json> array;
  std::map<std::string, json> object;

  /// Member `key` of an object, or nullptr when absent or not an object.
  const json* find(const std::string& key) const {
    if (type != kind::object) return nullptr;
    const auto it = object.find(key);
    return it == object.end() ? nullptr : &it->second;
  }
};

/// Thrown for text that is not JSON; what() gives the byte offset.
class json_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

class json_parser {
 public:
  explicit json_parser(const std::string& text) : s_(text) {}

  json parse_document() {
    json v = value();
    space();
    if (at_ < s_.size()) fail("unexpected text after the document");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw json_error("JSON: " + std::string(what) + " at byte " + std::to_string(at_));
  }
  void space() {
    while (at_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[at_]))) ++at_;
  }
  char peek() {
    space();
    if (at_ >= s_.size()) fail("unexpected end of text");
    return s_[at_];
  }
  void expect(char c) {
    if (peek() != c) fail((std::string("expected '") + c + "'").c_str());
    ++at_;
  }
  bool literal(const char* word) {
    const std::string w(word);
    if (s_.compare(at_, w.size(), w) != 0) return false;
    at_ += w.size();
    return true;
  }

  json value() {
    if (++depth_ > 256) fail("nesting too deep");
    json v;
    const char c = peek();
    if (c == '{') {
      v.type = json::kind::object;
      ++at_;
      if (peek() == '}') {
        ++at_;
      } else {
        for (;;) {
          if (peek() != '"') fail("expected a member name");
          std::string key = string_body();
          expect(':');
          v.object[key] = value();
          if (peek() == ',') {
            ++at_;
            continue;
          }
          expect('}');
          break;
        }
      }
    } else if (c == '[') {
      v.type = json::kind::array;
      ++at_;
      if (peek() == ']') {
        ++at_;
      } else {
        for (;;) {
          v.array.push_back(value());
          if (peek() == ',') {
            ++at_;
            continue;
          }
          expect(']');
          break;
        }
      }
    } else if (c == '"') {
      v.type = json::kind::string;
      v.string = string_body();
    } else if (literal("true")) {
      v.type = json::kind::boolean;
      v.boolean = true;
    } else if (literal("false")) {
      v.type = json::kind::boolean;
    } else if (literal("null")) {
      v.type = json::kind::null;
    } else if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      v.type = json::kind::number;
      const char* begin = s_.c_str() + at_;
      char* end = nullptr;
      v.number = std::strtod(begin, &end);
      if (end == begin) fail("bad number");
      at_ += static_cast<size_t>(end - begin);
    } else if (literal("NaN") || literal("-nan") || literal("nan")) {
      v.type = json::kind::number;  // Google Benchmark may print NaN for empty counters
      v.number = std::nan("");
    } else {
      fail("unexpected character");
    }
    --depth_;
    return v;
  }

  std::string string_body() {
    expect('"');
    std::string out;
    for (;;) {
      if (at_ >= s_.size()) fail("unterminated string");
      const char c = s_[at_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_ >= s_.size()) fail("unterminated escape");
      const char e = s_[at_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'u': {
          if (at_ + 4 > s_.size()) fail("short \\u escape");
          const long code = std::strtol(s_.substr(at_, 4).c_str(), nullptr, 16);
          at_ += 4;
          out += code < 0x80 ? static_cast<char>(code) : '?';
          break;
        }
        default:
          out += e;  // \" \\ \/
      }
    }
  }

  const std::string& s_;
  size_t at_ = 0;
  int depth_ = 0;
};

}  // namespace detail

/// Parses a JSON document. Throws json_error for malformed text.
inline json parse_json(const std::string& text) {
  return detail::json_parser(text).parse_document();
}

/// One entry of a Google Benchmark JSON report, with times in nanoseconds.
struct benchmark_run {
  std::string name;           ///< full name, e.g. "row/ssmax/float/avx512f/4096"
  std::string run_name;       ///< name without an aggregate's suffix (name when absent)
  std::string run_type;       ///< "iteration" or "aggregate"
  std::string aggregate;      ///< "mean", "median", ... for aggregates, else empty
  double real_time_ns = 0.0;  ///< wall time per iteration
  double cpu_time_ns = 0.0;   ///< CPU time per iteration
  double iterations = 0.0;
  bool error = false;                      ///< the benchmark reported an error or skipped
  std::map<std::string, double> counters;  ///< every other numeric field (items_per_second, ...)
};

/// The runs of a Google Benchmark JSON report (its "benchmarks" array).
/// Throws json_error when the text is not JSON or has no "benchmarks" array.
inline std::vector<benchmark_run> read_benchmark_runs(const std::string& text) {
  const json doc = parse_json(text);
  const json* list = doc.find("benchmarks");
  if (list == nullptr || list->type != json::kind::array)
    throw json_error("JSON: no \"benchmarks\" array (not a Google Benchmark report?)");
  std::vector<benchmark_run> runs;
  for (const json& b : list->array) {
    if (b.type != json::kind::object) continue;
    benchmark_run r;
    double to_ns = 1.0;
    if (const json* unit = b.find("time_unit")) {
      if (unit->string == "us") to_ns = 1e3;
      if (unit->string == "ms") to_ns = 1e6;
      if (unit->string == "s") to_ns = 1e9;
    }
    for (const auto& [key, v] : b.object) {
      if (key == "name")
        r.name = v.string;
      else if (key == "run_name")
        r.run_name = v.string;
      else if (key == "run_type")
        r.run_type = v.string;
      else if (key == "aggregate_name")
        r.aggregate = v.string;
      else if (key == "real_time")
        r.real_time_ns = v.number * to_ns;
      else if (key == "cpu_time")
        r.cpu_time_ns = v.number * to_ns;
      else if (key == "iterations")
        r.iterations = v.number;
      else if (key == "error_occurred" || key == "skipped")
        r.error = r.error || v.boolean;
      else if (key == "error_message")
        r.error = true;
      else if (v.type == json::kind::number)
        r.counters[key] = v.number;
    }
    if (r.run_type.empty()) r.run_type = "iteration";
    if (r.run_name.empty()) r.run_name = r.name;
    runs.push_back(std::move(r));
  }
  return runs;
}

}  // namespace ssmax::study
