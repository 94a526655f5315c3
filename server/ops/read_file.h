// Reads a whole (small) file named by a flag, with an error that names it.
#ifndef IDEM_SERVER_OPS_READ_FILE_H_
#define IDEM_SERVER_OPS_READ_FILE_H_

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace idem::server {

// `what` names the file's role in the error, e.g. "policy".
inline absl::StatusOr<std::string> ReadFile(const std::string& path,
                                            const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the ", what, " file ", path));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_READ_FILE_H_
