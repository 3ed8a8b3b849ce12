// Random identifiers: upload tokens, attach nonces.
#ifndef CKPT_COMMON_RANDOM_ID_H_
#define CKPT_COMMON_RANDOM_ID_H_

#include <string>

namespace ckpt {

// 128 bits from std::random_device as 32 lowercase hex digits.
std::string RandomHex128();

}  // namespace ckpt

#endif  // CKPT_COMMON_RANDOM_ID_H_
