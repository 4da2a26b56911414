// The one C++ translation unit: a boxed kernel reports bad input by throwing, and torch's
// dispatcher turns a std::exception into a Python RuntimeError. The C sources are compiled
// with -fexceptions so the exception unwinds through their frames.
#include <stdexcept>

extern "C" [[noreturn]] void stl_throw(const char *msg) { throw std::runtime_error(msg); }
