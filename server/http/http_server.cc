#include "server/http/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/ops/address.h"

namespace idem::server {
namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr size_t kReadChunk = 64 << 10;
// How long a connection we close keeps reading (State::kLingering).
constexpr absl::Duration kLinger = absl::Seconds(2);

absl::string_view Reason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Status";
  }
}

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();  // NOLINT(google-runtime-int)
  if (code == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  ERR_clear_error();
  return text;
}

std::string PeerAddress(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (address.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&address);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
    return absl::StrCat("[", host, "]:", port);
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&address);
  inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
  port = ntohs(a->sin_port);
  return absl::StrCat(host, ":", port);
}

// A chunked body, decoded as it arrives.
class ChunkedDecoder {
 public:
  enum class Result { kIncomplete, kDone, kBad, kTooBig };

  // Consumes bytes of `in` from *pos on, appending data to `body`.
  Result Feed(const std::string& in, size_t* pos, size_t max_body,
              std::string* body) {
    while (true) {
      switch (phase_) {
        case Phase::kSize: {
          const size_t eol = in.find("\r\n", *pos);
          if (eol == std::string::npos) {
            return in.size() - *pos > 1024 ? Result::kBad : Result::kIncomplete;
          }
          absl::string_view line(in.data() + *pos, eol - *pos);
          line = line.substr(0, line.find(';'));  // Extensions ignored.
          uint64_t size = 0;
          // Hex digits only: no sign, prefix or spaces that another parser
          // on the path might read differently.
          if (line.empty() || line.size() > 15 ||
              !std::all_of(line.begin(), line.end(),
                           [](char ch) {
                             return absl::ascii_isxdigit(
                                 static_cast<unsigned char>(ch));
                           }) ||
              !absl::SimpleHexAtoi(line, &size)) {
            return Result::kBad;
          }
          *pos = eol + 2;
          if (size == 0) {
            phase_ = Phase::kTrailer;
            break;
          }
          if (body->size() + size > max_body) return Result::kTooBig;
          left_ = size;
          phase_ = Phase::kData;
          break;
        }
        case Phase::kData: {
          const size_t n = std::min(left_, in.size() - *pos);
          body->append(in, *pos, n);
          *pos += n;
          left_ -= n;
          if (left_ > 0) return Result::kIncomplete;
          phase_ = Phase::kDataEnd;
          break;
        }
        case Phase::kDataEnd:
          if (in.size() - *pos < 2) return Result::kIncomplete;
          if (in.compare(*pos, 2, "\r\n") != 0) return Result::kBad;
          *pos += 2;
          phase_ = Phase::kSize;
          break;
        case Phase::kTrailer: {
          // Trailer fields are read and dropped, up to the empty line.
          const size_t eol = in.find("\r\n", *pos);
          if (eol == std::string::npos) {
            return in.size() - *pos > 8192 ? Result::kBad : Result::kIncomplete;
          }
          const bool last = eol == *pos;
          *pos = eol + 2;
          if (last) return Result::kDone;
          break;
        }
      }
    }
  }

 private:
  enum class Phase { kSize, kData, kDataEnd, kTrailer };
  Phase phase_ = Phase::kSize;
  uint64_t left_ = 0;
};

}  // namespace

const std::string* HttpRequest::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return &value;
  }
  return nullptr;
}

// Where answers from other threads wait for the server's thread. Outlives
// the server as long as a Responder holds it.
struct Mailbox {
  explicit Mailbox(int fd) : wake_fd(fd) {}
  void Wake() const {
    const uint64_t one = 1;
    // A full counter still wakes the loop; nothing to do on failure.
    [[maybe_unused]] const ssize_t n = write(wake_fd, &one, sizeof(one));
  }

  const int wake_fd;
  absl::Mutex mu;
  std::vector<std::pair<uint64_t, HttpResponse>> answers ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
};

struct Responder::Pending {
  Pending(std::shared_ptr<Mailbox> m, uint64_t id)
      : mailbox(std::move(m)), connection(id) {}
  const std::shared_ptr<Mailbox> mailbox;
  const uint64_t connection;
  std::atomic<bool> sent{false};
  absl::Mutex mu;
  std::function<void()> cancel ABSL_GUARDED_BY(mu);
  bool cancelled ABSL_GUARDED_BY(mu) = false;

  // On the server's thread: the connection is gone.
  void Cancel() {
    std::function<void()> run;
    {
      absl::MutexLock lock(&mu);
      cancelled = true;
      run = std::move(cancel);
    }
    if (run) run();
  }
};

void Responder::Send(HttpResponse response) const {
  if (pending_->sent.exchange(true)) return;
  Mailbox& mailbox = *pending_->mailbox;
  // Woken under the lock: once `closed` is set the descriptor may be
  // closed and its number reused.
  absl::MutexLock lock(&mailbox.mu);
  if (mailbox.closed) return;
  mailbox.answers.emplace_back(pending_->connection, std::move(response));
  mailbox.Wake();
}

void Responder::OnCancel(std::function<void()> cancel) const {
  {
    absl::MutexLock lock(&pending_->mu);
    if (!pending_->cancelled) {
      pending_->cancel = std::move(cancel);
      return;
    }
  }
  cancel();
}

class HttpServer::Loop {
 public:
  Loop(Options options, Handler handler, int listen_fd, int epoll_fd,
       std::shared_ptr<Mailbox> mailbox, std::atomic<uint64_t>* dropped,
       std::atomic<uint64_t>* open)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        listen_fd_(listen_fd),
        epoll_fd_(epoll_fd),
        mailbox_(std::move(mailbox)),
        dropped_(dropped),
        open_(open) {}

  ~Loop() {
    for (auto& [id, connection] : connections_) CloseNow(connection.get());
    connections_.clear();
    if (listen_fd_ >= 0) close(listen_fd_);
    close(epoll_fd_);
    absl::MutexLock lock(&mailbox_->mu);
    mailbox_->closed = true;
    close(mailbox_->wake_fd);
  }

  void Run();
  void RequestDrain(absl::Time deadline) {
    {
      absl::MutexLock lock(&drain_mu_);
      drain_deadline_ = deadline;
      draining_ = true;
    }
    mailbox_->Wake();
  }

 private:
  // kReading: a request is read (or awaited); kWaiting: the handler has
  // it; kWriting: its answer is being written; kLingering: the answer said
  // the connection closes: our side is shut, and what the peer still sends
  // is read and dropped for a moment, so that closing with unread input
  // does not reset the connection before the peer has read the answer.
  enum class State { kReading, kWaiting, kWriting, kLingering };
  struct Connection {
    uint64_t id = 0;
    int fd = -1;
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl{nullptr, &SSL_free};
    std::string peer;
    std::string peer_certificate;
    bool tls_checked = false;
    State state = State::kReading;
    // Bytes read; those before in_pos are consumed (compacted lazily, so
    // that pipelined requests cost linear time).
    std::string in;
    size_t in_pos = 0;
    bool have_head = false;  // The current request's head is parsed.
    std::optional<HttpRequest> request;
    bool chunked = false;
    size_t content_length = 0;
    size_t body_start = 0;  // Where the body begins in `in`.
    size_t body_pos = 0;    // Chunked: how far the body is decoded.
    ChunkedDecoder chunks;
    bool sent_continue = false;
    bool keep_alive = true;
    bool keep_alive_default = true;  // HTTP/1.1 (not 1.0).
    bool head_only = false;          // A HEAD request: no body in the answer.
    std::string out;
    size_t out_pos = 0;
    bool close_after = false;
    bool read_wants_write = false;
    bool write_wants_read = false;
    absl::Time deadline;  // Of the current phase.
    std::shared_ptr<Responder::Pending> pending;
    uint32_t events = 0;
  };

  void Accept();
  void OnEvent(Connection* c, uint32_t events);
  void ReadSome(Connection* c);
  void Parse(Connection* c);
  // `head` (without its blank line) is complete: fills c->request; false
  // when refused.
  bool ParseHead(Connection* c, absl::string_view head);
  void Dispatch(Connection* c);
  void Refuse(Connection* c, int status, std::string message);
  void Queue(Connection* c, const HttpResponse& response);
  void Flush(Connection* c);
  void AfterWrite(Connection* c);
  void Watch(Connection* c);
  void Close(Connection* c);
  void CloseNow(Connection* c);
  void DeliverAnswers();
  void Sweep(absl::Time now);
  // Bytes read and not yet consumed.
  static size_t Unread(const Connection& c) { return c.in.size() - c.in_pos; }
  // How many unread bytes `c` may hold: a whole request while one is read,
  // the next head otherwise (a pipelined request waits its turn).
  size_t ReadCap(const Connection& c) const {
    return c.state == State::kReading
               ? options_.max_head_bytes + options_.max_body_bytes + 4096
               : options_.max_head_bytes;
  }
  // Compact(), keeping buffered_ right.
  void CompactCounted(Connection* c) {
    const size_t before = c->in.size();
    Compact(*c);
    buffered_ -= before - c->in.size();
  }
  // Drops consumed bytes once they are at least half of the buffer.
  static void Compact(Connection& c) {
    if (c.in_pos == 0) return;
    if (c.in_pos == c.in.size()) {
      c.in.clear();
    } else if (c.in_pos < c.in.size() / 2) {
      return;
    } else {
      c.in.erase(0, c.in_pos);
    }
    c.body_start -= std::min(c.body_start, c.in_pos);
    c.body_pos -= std::min(c.body_pos, c.in_pos);
    c.in_pos = 0;
  }

  const Options options_;
  const Handler handler_;
  int listen_fd_;
  const int epoll_fd_;
  const std::shared_ptr<Mailbox> mailbox_;
  std::atomic<uint64_t>* const dropped_;
  std::atomic<uint64_t>* const open_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Connection>> connections_;
  // Bytes read and held by all connections (Options::max_buffered_bytes).
  size_t buffered_ = 0;
  std::vector<uint64_t> closed_;  // Erased after the events of a round.
  uint64_t next_id_ = 2;
  // Out of file descriptors: accepting pauses until this time, instead of
  // spinning on a listening socket that stays readable.
  absl::Time accept_paused_until_ = absl::InfinitePast();
  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(drain_mu_);
};

void HttpServer::Loop::Run() {
  epoll_event events[256];
  absl::Time last_sweep = absl::Now();
  absl::Time last_waiting = absl::Now();
  bool accepting = true;
  while (true) {
    const int n = epoll_wait(epoll_fd_, events, 256, 250);
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kListenId) {
        if (accepting) Accept();
      } else if (id == kWakeId) {
        uint64_t count = 0;
        [[maybe_unused]] const ssize_t r =
            read(mailbox_->wake_fd, &count, sizeof(count));
        DeliverAnswers();
      } else if (auto it = connections_.find(id); it != connections_.end()) {
        OnEvent(it->second.get(), events[i].events);
      }
    }
    for (uint64_t id : closed_) connections_.erase(id);
    closed_.clear();
    const absl::Time now = absl::Now();
    if (now - last_sweep >= absl::Milliseconds(250)) {
      Sweep(now);
      last_sweep = now;
    }
    if (accepting && accept_paused_until_ != absl::InfinitePast() &&
        now >= accept_paused_until_) {
      accept_paused_until_ = absl::InfinitePast();
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.u64 = kListenId;
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event);
    }
    bool draining = false;
    absl::Time drain_deadline;
    {
      absl::MutexLock lock(&drain_mu_);
      draining = draining_;
      drain_deadline = drain_deadline_;
    }
    if (!draining) continue;
    if (accepting) {
      accepting = false;
      if (accept_paused_until_ == absl::InfinitePast()) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      }
      close(listen_fd_);
      listen_fd_ = -1;
    }
    // Requests not yet handed over are closed; answers still owed are
    // written, then their connections close. Once every request taken has
    // its answer, writing gets one more second: the caller (the server's
    // shutdown) has gRPC to stop within the same grace.
    bool waiting = false;
    bool writing = false;
    for (auto& [id, connection] : connections_) {
      Connection* c = connection.get();
      if (c->fd < 0) continue;
      if (c->state == State::kReading || c->state == State::kLingering) {
        Close(c);
      } else {
        c->close_after = true;
        (c->state == State::kWaiting ? waiting : writing) = true;
      }
    }
    for (uint64_t id : closed_) connections_.erase(id);
    closed_.clear();
    if (waiting) last_waiting = now;
    if ((!waiting && !writing) || now >= drain_deadline ||
        (!waiting && now - last_waiting >= absl::Seconds(1))) {
      break;
    }
  }
  {
    absl::MutexLock lock(&mailbox_->mu);
    mailbox_->closed = true;
  }
  for (auto& [id, connection] : connections_) Close(connection.get());
  connections_.clear();
  closed_.clear();
}

void HttpServer::Loop::Accept() {
  while (true) {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    const int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&address),
                           &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
          errno == ENOMEM) {
        // The backlog keeps the connection; try again in a moment.
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        accept_paused_until_ = absl::Now() + absl::Milliseconds(250);
      }
      return;
    }
    if (connections_.size() >= options_.max_connections) {
      close(fd);
      dropped_->fetch_add(1);
      continue;
    }
    const int yes = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->fd = fd;
    c->peer = PeerAddress(address);
    c->deadline = absl::Now() + options_.request_timeout;
    if (options_.tls) {
      std::shared_ptr<SSL_CTX> context = options_.tls();
      SSL* ssl = context != nullptr ? SSL_new(context.get()) : nullptr;
      if (ssl == nullptr) {
        close(fd);
        dropped_->fetch_add(1);
        continue;
      }
      c->ssl.reset(ssl);
      SSL_set_fd(ssl, fd);
      SSL_set_accept_state(ssl);
    }
    Connection* raw = c.get();
    connections_.emplace(c->id, std::move(c));
    open_->fetch_add(1);
    Watch(raw);
  }
}

void HttpServer::Loop::Watch(Connection* c) {
  if (c->fd < 0) return;
  uint32_t events = EPOLLRDHUP;
  // While TLS needs to write before it can read, waiting for input would
  // only spin: wait for room to write instead.
  if (!c->read_wants_write &&
      (Unread(*c) < ReadCap(*c) || c->state == State::kLingering) &&
      buffered_ < options_.max_buffered_bytes) {
    events |= EPOLLIN;
  }
  if (c->out_pos < c->out.size() || c->read_wants_write) events |= EPOLLOUT;
  if (c->write_wants_read) events |= EPOLLIN;
  if (events == c->events) return;
  epoll_event event{};
  event.events = events;
  event.data.u64 = c->id;
  epoll_ctl(epoll_fd_, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd,
            &event);
  c->events = events;
}

void HttpServer::Loop::OnEvent(Connection* c, uint32_t events) {
  if (c->fd < 0) return;
  if ((events & EPOLLOUT) != 0 || c->write_wants_read) {
    if (c->read_wants_write) {
      c->read_wants_write = false;
      ReadSome(c);
      if (c->fd < 0) return;
    }
    if (c->out_pos < c->out.size()) Flush(c);
    if (c->fd < 0) return;
  }
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
    ReadSome(c);
  }
}

void HttpServer::Loop::ReadSome(Connection* c) {
  char buffer[kReadChunk];
  bool eof = false;
  // At most 1 MiB per turn, so that one fast sender cannot hold the loop
  // (epoll reports the rest again).
  for (int turn = 0; turn < 16; ++turn) {
    ssize_t n = 0;
    if (c->ssl != nullptr) {
      ERR_clear_error();
      const int r = SSL_read(c->ssl.get(), buffer, sizeof(buffer));
      if (r > 0) {
        n = r;
      } else {
        const int error = SSL_get_error(c->ssl.get(), r);
        if (error == SSL_ERROR_WANT_READ) break;
        if (error == SSL_ERROR_WANT_WRITE) {
          c->read_wants_write = true;
          break;
        }
        eof = true;  // Closed, or a failed handshake: nothing to answer.
        break;
      }
    } else {
      n = read(c->fd, buffer, sizeof(buffer));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      if (n <= 0) {
        eof = true;
        break;
      }
    }
    if (c->state == State::kLingering) continue;  // Dropped.
    if (Unread(*c) == 0 && c->state == State::kReading && !c->have_head) {
      c->deadline = absl::Now() + options_.request_timeout;
    }
    c->in.append(buffer, static_cast<size_t>(n));
    buffered_ += static_cast<size_t>(n);
    if (Unread(*c) >= ReadCap(*c) || buffered_ >= options_.max_buffered_bytes) {
      break;
    }
  }
  if (c->ssl != nullptr && !c->tls_checked &&
      SSL_is_init_finished(c->ssl.get())) {
    c->tls_checked = true;
    X509* cert = SSL_get_peer_certificate(c->ssl.get());
    if (cert != nullptr) {
      if (SSL_get_verify_result(c->ssl.get()) == X509_V_OK) {
        BIO* bio = BIO_new(BIO_s_mem());
        if (bio != nullptr && PEM_write_bio_X509(bio, cert) == 1) {
          char* data = nullptr;
          const long size = BIO_get_mem_data(bio, &data);  // NOLINT
          c->peer_certificate.assign(data, static_cast<size_t>(size));
        }
        BIO_free(bio);
      }
      X509_free(cert);
    }
  }
  if (eof) {
    // A request the handler holds is cancelled; an answer being written
    // has nobody to read it.
    Close(c);
    return;
  }
  if (c->state == State::kReading) Parse(c);
  Watch(c);
}

bool HttpServer::Loop::ParseHead(Connection* c, absl::string_view head) {
  c->head_only = false;
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> first =
      absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (first.size() != 3 || first[0].empty() || first[1].empty() ||
      first[1][0] != '/') {
    Refuse(c, 400, "malformed request line");
    return false;
  }
  if (first[2] != "HTTP/1.1" && first[2] != "HTTP/1.0") {
    Refuse(c, 505, "only HTTP/1.1 and HTTP/1.0 are served here");
    return false;
  }
  HttpRequest request;
  request.method = std::string(first[0]);
  c->head_only = request.method == "HEAD";
  const absl::string_view target = first[1];
  const size_t question = target.find('?');
  request.path = std::string(target.substr(0, question));
  if (question != absl::string_view::npos) {
    request.query = std::string(target.substr(question + 1));
  }
  bool has_length = false;
  c->chunked = false;
  c->content_length = 0;
  c->keep_alive = first[2] == "HTTP/1.1";
  c->keep_alive_default = c->keep_alive;
  for (size_t i = 1; i < lines.size(); ++i) {
    const absl::string_view line = lines[i];
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0 || line[0] == ' ' ||
        line[0] == '\t' || line[colon - 1] == ' ' || line[colon - 1] == '\t' ||
        line.find_first_of(absl::string_view("\r\n\0", 3)) !=
            absl::string_view::npos) {
      Refuse(c, 400, "malformed header line");
      return false;
    }
    std::string name = absl::AsciiStrToLower(line.substr(0, colon));
    std::string value =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (name == "content-length") {
      size_t length = 0;
      if (value.empty() || value.size() > 18 ||
          !std::all_of(value.begin(), value.end(),
                       [](char ch) {
                         return absl::ascii_isdigit(
                             static_cast<unsigned char>(ch));
                       }) ||
          !absl::SimpleAtoi(value, &length) ||
          (has_length && length != c->content_length)) {
        Refuse(c, 400, "malformed Content-Length");
        return false;
      }
      has_length = true;
      c->content_length = length;
    } else if (name == "transfer-encoding") {
      if (!absl::EqualsIgnoreCase(value, "chunked")) {
        Refuse(c, 501, "only chunked transfer coding is supported");
        return false;
      }
      c->chunked = true;
    } else if (name == "connection") {
      for (absl::string_view token : absl::StrSplit(value, ',')) {
        token = absl::StripAsciiWhitespace(token);
        if (absl::EqualsIgnoreCase(token, "close")) c->keep_alive = false;
        if (absl::EqualsIgnoreCase(token, "keep-alive")) c->keep_alive = true;
      }
    }
    request.headers.emplace_back(std::move(name), std::move(value));
  }
  if (has_length && c->chunked) {
    Refuse(c, 400, "Content-Length and Transfer-Encoding together");
    return false;
  }
  if (c->content_length > options_.max_body_bytes) {
    Refuse(c, 413,
           absl::StrCat("the request body (", c->content_length,
                        " bytes) is larger than this server accepts (",
                        options_.max_body_bytes, " bytes)"));
    return false;
  }
  request.tls = c->ssl != nullptr;
  request.peer_certificate = c->peer_certificate;
  request.peer = c->peer;
  c->request = std::move(request);
  c->chunks = ChunkedDecoder();
  c->sent_continue = false;
  return true;
}

void HttpServer::Loop::Parse(Connection* c) {
  while (c->fd >= 0 && c->state == State::kReading) {
    if (!c->have_head) {
      const size_t end = c->in.find("\r\n\r\n", c->in_pos);
      if (end == std::string::npos) {
        if (Unread(*c) > options_.max_head_bytes) {
          Refuse(c, 431, "the request head is too large");
        }
        return;
      }
      if (end + 4 - c->in_pos > options_.max_head_bytes) {
        Refuse(c, 431, "the request head is too large");
        return;
      }
      if (!ParseHead(
              c, absl::string_view(c->in).substr(c->in_pos, end - c->in_pos))) {
        return;
      }
      c->have_head = true;
      c->body_start = c->body_pos = end + 4;
    }
    HttpRequest& request = *c->request;
    if (c->chunked) {
      switch (c->chunks.Feed(c->in, &c->body_pos, options_.max_body_bytes,
                             &request.body)) {
        case ChunkedDecoder::Result::kIncomplete:
          // Decoded bytes are consumed: only the undecoded rest counts.
          c->in_pos = c->body_pos;
          CompactCounted(c);
          break;
        case ChunkedDecoder::Result::kBad:
          Refuse(c, 400, "malformed chunked body");
          return;
        case ChunkedDecoder::Result::kTooBig:
          Refuse(c, 413,
                 absl::StrCat("the request body is larger than this server "
                              "accepts (",
                              options_.max_body_bytes, " bytes)"));
          return;
        case ChunkedDecoder::Result::kDone:
          c->in_pos = c->body_pos;
          Dispatch(c);
          continue;
      }
    } else if (c->in.size() - c->body_start >= c->content_length) {
      request.body = c->in.substr(c->body_start, c->content_length);
      c->in_pos = c->body_start + c->content_length;
      Dispatch(c);
      continue;
    }
    // The body is still coming: answer Expect: 100-continue once.
    const std::string* expect = request.Header("expect");
    if (expect != nullptr && !c->sent_continue && c->keep_alive_default &&
        absl::EqualsIgnoreCase(*expect, "100-continue")) {
      c->sent_continue = true;
      c->out.append("HTTP/1.1 100 Continue\r\n\r\n");
      Flush(c);
    }
    return;
  }
}

void HttpServer::Loop::Dispatch(Connection* c) {
  c->have_head = false;
  CompactCounted(c);
  c->state = State::kWaiting;
  c->pending = std::make_shared<Responder::Pending>(mailbox_, c->id);
  HttpRequest request = *std::move(c->request);
  c->request.reset();
  handler_(std::move(request), Responder(c->pending));
}

void HttpServer::Loop::Refuse(Connection* c, int status, std::string message) {
  dropped_->fetch_add(1);
  HttpResponse response;
  if (options_.refusal) {
    response = options_.refusal(status, std::move(message));
  } else {
    response.status = status;
    response.headers = {{"Content-Type", "text/plain; charset=utf-8"}};
    response.body = std::move(message) + "\n";
  }
  response.status = status;
  // What follows on the connection cannot be trusted to frame requests.
  response.close = true;
  c->state = State::kWaiting;
  Queue(c, response);
}

void HttpServer::Loop::Queue(Connection* c, const HttpResponse& response) {
  std::string& out = c->out;
  absl::StrAppend(&out, "HTTP/1.1 ", response.status, " ",
                  Reason(response.status), "\r\n");
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(&out, name, ": ", value, "\r\n");
  }
  c->close_after = c->close_after || response.close || !c->keep_alive;
  absl::StrAppend(&out, "Content-Length: ", response.body.size(), "\r\n",
                  c->close_after ? "Connection: close\r\n" : "", "\r\n");
  if (!c->head_only) out.append(response.body);
  c->state = State::kWriting;
  c->pending.reset();
  c->deadline = absl::Now() + options_.request_timeout;
  Flush(c);
}

void HttpServer::Loop::Flush(Connection* c) {
  c->write_wants_read = false;
  while (c->out_pos < c->out.size()) {
    const size_t left = c->out.size() - c->out_pos;
    const size_t size = std::min<size_t>(left, 1 << 20);
    ssize_t n = 0;
    if (c->ssl != nullptr) {
      ERR_clear_error();
      const int r = SSL_write(c->ssl.get(), c->out.data() + c->out_pos,
                              static_cast<int>(size));
      if (r <= 0) {
        const int error = SSL_get_error(c->ssl.get(), r);
        if (error == SSL_ERROR_WANT_WRITE) break;
        if (error == SSL_ERROR_WANT_READ) {
          c->write_wants_read = true;
          break;
        }
        Close(c);
        return;
      }
      n = r;
    } else {
      n = send(c->fd, c->out.data() + c->out_pos, size, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      if (n <= 0) {
        Close(c);
        return;
      }
    }
    c->out_pos += static_cast<size_t>(n);
    // A slow reader that makes progress is not cut off.
    c->deadline = absl::Now() + options_.request_timeout;
  }
  if (c->out_pos == c->out.size()) {
    c->out.clear();
    c->out_pos = 0;
    if (c->state == State::kWriting) {
      AfterWrite(c);
      return;
    }
  }
  Watch(c);
}

void HttpServer::Loop::AfterWrite(Connection* c) {
  if (c->close_after) {
    // Our side is done; read and drop what the peer still sends (the rest
    // of a refused body) for a moment, then close.
    if (c->ssl != nullptr) SSL_shutdown(c->ssl.get());
    shutdown(c->fd, SHUT_WR);
    buffered_ -= c->in.size();
    c->in.clear();
    c->in_pos = 0;
    c->state = State::kLingering;
    c->deadline = absl::Now() + kLinger;
    Watch(c);
    return;
  }
  c->state = State::kReading;
  c->deadline = absl::Now() + (Unread(*c) == 0 ? options_.idle_timeout
                                               : options_.request_timeout);
  Parse(c);  // A pipelined request may be waiting.
  Watch(c);
}

void HttpServer::Loop::DeliverAnswers() {
  std::vector<std::pair<uint64_t, HttpResponse>> answers;
  {
    absl::MutexLock lock(&mailbox_->mu);
    answers.swap(mailbox_->answers);
  }
  for (auto& [id, response] : answers) {
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    Connection* c = it->second.get();
    if (c->fd < 0 || c->state != State::kWaiting) continue;
    Queue(c, response);
  }
}

void HttpServer::Loop::Sweep(absl::Time now) {
  for (auto& [id, connection] : connections_) {
    Connection* c = connection.get();
    if (c->fd >= 0) Watch(c);  // Reading paused by the byte budget resumes.
    if (c->fd < 0 || c->state == State::kWaiting || now < c->deadline) {
      continue;
    }
    if (c->state == State::kReading && Unread(*c) > 0) {
      Refuse(c, 408, "the request did not arrive in time");
      // A client that does not read its refusal is closed on the next
      // sweep past this deadline.
      c->deadline = now + options_.request_timeout;
      continue;
    }
    if (c->state == State::kWriting) dropped_->fetch_add(1);
    Close(c);
  }
}

void HttpServer::Loop::Close(Connection* c) {
  if (c->fd < 0) return;
  CloseNow(c);
  closed_.push_back(c->id);
}

void HttpServer::Loop::CloseNow(Connection* c) {
  if (c->fd < 0) return;
  std::shared_ptr<Responder::Pending> pending = std::move(c->pending);
  if (c->ssl != nullptr && c->state != State::kLingering &&
      SSL_is_init_finished(c->ssl.get())) {
    SSL_shutdown(c->ssl.get());  // Best effort close_notify.
  }
  buffered_ -= c->in.size();
  c->in.clear();
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  c->fd = -1;
  open_->fetch_sub(1);
  if (pending != nullptr && !pending->sent.load()) pending->Cancel();
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(Options options,
                                                              Handler handler) {
  if (options.tls) {
    // OpenSSL writes with write(2): a peer that closed first would raise
    // SIGPIPE, whose default action ends the process.
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 &&
        current.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
  }
  absl::StatusOr<HostPort> address =
      ParseHostPort(options.listen, PortZero::kAllowed);
  if (!address.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP address \"", options.listen, "\": ", address.status().message()));
  }
  int port = 0;
  const int fd = ListenTcp(address->host, address->port, &port);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for HTTP on ", options.listen, ": ",
        -fd == EADDRINUSE ? "address in use (is another server running?)"
                          : std::strerror(-fd)));
  }
  const int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  if (wake < 0 || epoll < 0) {
    const int error = errno;
    close(fd);
    if (wake >= 0) close(wake);
    if (epoll >= 0) close(epoll);
    return absl::UnavailableError(
        absl::StrCat("eventfd/epoll: ", std::strerror(error)));
  }
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = kListenId;
  epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
  event.data.u64 = kWakeId;
  epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event);
  std::unique_ptr<HttpServer> server(new HttpServer(port, nullptr));
  server->loop_ = std::make_unique<Loop>(
      std::move(options), std::move(handler), fd, epoll,
      std::make_shared<Mailbox>(wake), &server->dropped_, &server->open_);
  server->thread_ = std::thread([loop = server->loop_.get()] { loop->Run(); });
  return server;
}

HttpServer::HttpServer(int port, std::unique_ptr<Loop> loop)
    : port_(port), loop_(std::move(loop)) {}

HttpServer::~HttpServer() { Drain(absl::ZeroDuration()); }

void HttpServer::Drain(absl::Duration grace) {
  if (drained_) return;
  drained_ = true;
  loop_->RequestDrain(absl::Now() + grace);
  // The loop looks at the request within its 250 ms poll.
  thread_.join();
  loop_.reset();
}

absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeServerTlsContext(
    absl::string_view cert_chain_pem, absl::string_view key_pem,
    absl::string_view client_ca_pem) {
  ERR_clear_error();
  std::shared_ptr<SSL_CTX> context(SSL_CTX_new(TLS_server_method()),
                                   &SSL_CTX_free);
  if (context == nullptr) {
    return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslError()));
  }
  SSL_CTX_set_min_proto_version(context.get(), TLS1_2_VERSION);
  // A connection's client certificate is read once: no renegotiation.
  SSL_CTX_set_options(context.get(), SSL_OP_NO_RENEGOTIATION);
  // Required for TLS 1.2 session resumption when client certificates are
  // verified (OpenSSL fails such a resumption without it).
  static const unsigned char kSessionContext[] = "idem-http";
  SSL_CTX_set_session_id_context(context.get(), kSessionContext,
                                 sizeof(kSessionContext) - 1);
  SSL_CTX_set_mode(context.get(), SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  auto bio_of = [](absl::string_view pem) {
    return std::unique_ptr<BIO, decltype(&BIO_free)>(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  };
  {
    auto bio = bio_of(cert_chain_pem);
    X509* leaf = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (leaf == nullptr || SSL_CTX_use_certificate(context.get(), leaf) != 1) {
      X509_free(leaf);
      return absl::InvalidArgumentError(
          absl::StrCat("the TLS certificate: ", OpenSslError()));
    }
    X509_free(leaf);
    while (X509* chain =
               PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      SSL_CTX_add0_chain_cert(context.get(), chain);  // Takes ownership.
    }
    ERR_clear_error();  // The end of the chain reads as an error.
  }
  {
    auto bio = bio_of(key_pem);
    EVP_PKEY* key =
        PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
    const bool used =
        key != nullptr && SSL_CTX_use_PrivateKey(context.get(), key) == 1;
    EVP_PKEY_free(key);
    if (!used || SSL_CTX_check_private_key(context.get()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the TLS key: ", OpenSslError()));
    }
  }
  if (!client_ca_pem.empty()) {
    X509_STORE* store = SSL_CTX_get_cert_store(context.get());
    STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
    auto bio = bio_of(client_ca_pem);
    int count = 0;
    while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      X509_STORE_add_cert(store, ca);
      sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(ca)));
      X509_free(ca);
      ++count;
    }
    ERR_clear_error();
    if (count == 0) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      return absl::InvalidArgumentError(
          "the client CA bundle holds no certificate");
    }
    SSL_CTX_set_client_CA_list(context.get(), names);
    SSL_CTX_set_verify(context.get(),
                       SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
  }
  SSL_CTX_set_alpn_select_cb(
      context.get(),
      [](SSL* /*ssl*/, const unsigned char** out, unsigned char* out_length,
         const unsigned char* in, unsigned int in_length,
         void* /*arg*/) -> int {
        static const unsigned char kHttp11[] = {8,   'h', 't', 't', 'p',
                                                '/', '1', '.', '1'};
        unsigned char* selected = nullptr;
        if (SSL_select_next_proto(&selected, out_length, kHttp11,
                                  sizeof(kHttp11), in,
                                  in_length) != OPENSSL_NPN_NEGOTIATED) {
          return SSL_TLSEXT_ERR_NOACK;  // No ALPN: HTTP/1.1 all the same.
        }
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
      },
      nullptr);
  return context;
}

}  // namespace idem::server
