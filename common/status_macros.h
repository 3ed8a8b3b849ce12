// Small Status helpers missing from the abseil release Debian 12 ships (20220623).
//
//   RETURN_IF_ERROR(expr);            // returns the absl::Status of expr when it is not OK
//   ASSIGN_OR_RETURN(lhs, expr);      // lhs = *expr, or returns expr.status()
//
// Both evaluate expr exactly once. ASSIGN_OR_RETURN may declare its lhs: ASSIGN_OR_RETURN(auto x,
// F());
#ifndef CKPT_COMMON_STATUS_MACROS_H_
#define CKPT_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CKPT_STATUS_CONCAT_INNER_(a, b) a##b
#define CKPT_STATUS_CONCAT_(a, b) CKPT_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status ckpt_status_ = (expr);        \
    if (!ckpt_status_.ok()) return ckpt_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  CKPT_ASSIGN_OR_RETURN_IMPL_(CKPT_STATUS_CONCAT_(ckpt_statusor_, __LINE__), lhs, expr)

#define CKPT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

namespace ckpt {

// Returns `status` with `context` prepended to its message ("context: message"), code unchanged.
// An OK status is returned as is.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace ckpt

#endif  // CKPT_COMMON_STATUS_MACROS_H_
