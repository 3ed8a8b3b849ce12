// The result of Admin.Update as JSON (`ckptctl update --json`, the C ABI's ckpt_update) and text.
#ifndef CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_
#define CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_

#include <nlohmann/json.hpp>
#include <string>

#include "proto/admin.pb.h"

namespace ckpt::ctl {

nlohmann::json UpdateJson(const v1::UpdateResponse& update);
std::string UpdateText(const v1::UpdateResponse& update);

}  // namespace ckpt::ctl

#endif  // CKPT_CLIENT_CKPTCTL_UPDATE_FORMAT_H_
