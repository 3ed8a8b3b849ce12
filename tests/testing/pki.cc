#include "tests/testing/pki.h"

#include <fstream>

#include "tests/testing/subprocess.h"

namespace ckpt::testing {

std::string Pki::Openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "/usr/bin/openssl");
  RunResult r = Run(args);
  if (r.exit.code == 0) return "";
  return r.err.empty() ? "openssl failed" : r.err;
}

std::string Pki::Ca(const std::string& name) {
  return Openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-days", "2", "-subj", "/CN=" + name, "-keyout", key(name), "-out",
                  pem(name)});
}

std::string Pki::Leaf(const std::string& name, const std::string& ca, const std::string& san,
                      const std::string& extensions) {
  const std::string csr = dir_ + "/" + name + ".csr", ext = dir_ + "/" + name + ".ext";
  std::string e = Openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-subj", "/CN=" + name, "-keyout", key(name), "-out", csr});
  if (!e.empty()) return e;
  std::ofstream(ext) << "subjectAltName=" << san << "\n" << extensions << "\n";
  return Openssl({"x509", "-req", "-in", csr, "-CA", pem(ca), "-CAkey", key(ca), "-CAcreateserial",
                  "-days", "2", "-extfile", ext, "-out", pem(name)});
}

}  // namespace ckpt::testing
