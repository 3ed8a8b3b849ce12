#include "daemon/transfer/gloo_group.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "gloo/broadcast.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"

namespace ckpt::daemon {

GlooGroup::GlooGroup(std::shared_ptr<gloo::Context> context, Options options)
    : context_(std::move(context)), options_(std::move(options)) {}

GlooGroup::~GlooGroup() = default;

absl::StatusOr<std::unique_ptr<GlooGroup>> GlooGroup::Create(gloo::rendezvous::Store& store,
                                                             const Options& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gloo group: rank ", options.rank, " of ", options.size));
  }
  try {
    gloo::transport::tcp::attr attr;
    if (!options.interface.empty()) {
      attr.iface = options.interface;
    } else {
      attr.hostname = options.host;
    }
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
    context->setTimeout(absl::ToChronoMilliseconds(options.timeout));
    context->connectFullMesh(store, device);
    return std::unique_ptr<GlooGroup>(new GlooGroup(std::move(context), options));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "creating the Gloo group (rank ", options.rank, " of ", options.size, ", on ",
        options.interface.empty() ? options.host : options.interface, "): ", e.what()));
  }
}

absl::Status GlooGroup::Broadcast(uint8_t* data, uint64_t bytes, int root, uint32_t tag) {
  if (broken_) return absl::UnavailableError("the Gloo group broke in an earlier collective");
  if (root < 0 || root >= options_.size) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " of ", options_.size));
  }
  if (bytes == 0 || options_.size == 1) return absl::OkStatus();
  try {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(data, bytes);
    opts.setRoot(root);
    opts.setTag(tag);
    opts.setTimeout(absl::ToChronoMilliseconds(options_.timeout));
    gloo::broadcast(opts);
    return absl::OkStatus();
  } catch (const std::exception& e) {
    broken_ = true;
    // Its connections close now, so that the other ranks' collectives fail at once instead of at
    // their deadline.
    context_.reset();
    return absl::UnavailableError(absl::StrCat("broadcast of ", bytes, " bytes from rank ", root,
                                               " (this rank ", options_.rank, " of ", options_.size,
                                               "): ", e.what()));
  }
}

}  // namespace ckpt::daemon
