// Test certificates made with the openssl command: CAs and leaf certificates with chosen subject
// alternative names, as PEM files in a directory (NAME.pem, NAME.key).
#ifndef CKPT_TESTS_TESTING_PKI_H_
#define CKPT_TESTS_TESTING_PKI_H_

#include <string>
#include <vector>

namespace ckpt::testing {

class Pki {
 public:
  // Files go into `dir` (which must exist and outlive this object's use).
  explicit Pki(std::string dir) : dir_(std::move(dir)) {}
  // Each returns "" when the files were made, else openssl's error output.
  std::string Ca(const std::string& name);
  // `san`: openssl's subjectAltName value, e.g. "DNS:node-0,IP:127.0.0.1"; `extensions`: more
  // lines of the extension file (e.g. "extendedKeyUsage=serverAuth").
  std::string Leaf(const std::string& name, const std::string& ca, const std::string& san,
                   const std::string& extensions = "");
  std::string pem(const std::string& name) const { return dir_ + "/" + name + ".pem"; }
  std::string key(const std::string& name) const { return dir_ + "/" + name + ".key"; }

 private:
  std::string Openssl(std::vector<std::string> args);
  const std::string dir_;
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_PKI_H_
