// The main() of every Catch2 test binary that needs no custom start-up.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
