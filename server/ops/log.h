// Structured logging: one line per notable event on stderr, as key=value
// pairs that log collectors parse without a schema:
//
//   ts=2026-11-27T10:00:00.123456Z level=info event=lease_takeover ns="a b"
//   key=k1 token=7
//
// Values are quoted when they contain spaces, quotes or '='. Request and
// result bodies are never logged. Thread-safe.
#ifndef IDEM_SERVER_OPS_LOG_H_
#define IDEM_SERVER_OPS_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace idem::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Events below `level` are dropped. Default: kInfo.
void SetLogLevel(LogLevel level);
// "debug", "info", "warning", "error".
bool ParseLogLevel(absl::string_view text, LogLevel* level);
absl::string_view LogLevelName(LogLevel level);

using LogField = std::pair<absl::string_view, std::string>;
void Log(LogLevel level, absl::string_view event,
         std::initializer_list<LogField> fields = {});
// The line Log would write, without the time stamp (for tests).
std::string FormatLogLine(LogLevel level, absl::string_view event,
                          std::initializer_list<LogField> fields);

}  // namespace idem::server

#endif  // IDEM_SERVER_OPS_LOG_H_
