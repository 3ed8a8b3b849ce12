// Renders Admin.Status for `ckptctl status`: JSON (stable field names, numbers as numbers) or text.
#ifndef CKPT_CLIENT_CKPTCTL_STATUS_FORMAT_H_
#define CKPT_CLIENT_CKPTCTL_STATUS_FORMAT_H_

#include <nlohmann/json.hpp>
#include <string>

#include "proto/admin.pb.h"

namespace ckpt::ctl {

// Keys are the proto field names (snake_case); every field is present, lists may be empty.
nlohmann::json StatusJson(const v1::StatusResponse& status);

// A few aligned lines for people.
std::string StatusText(const v1::StatusResponse& status);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_STATUS_FORMAT_H_
