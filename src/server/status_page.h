#pragma once
// GET / on the admin listener: the status page (status_page.cc), and the headers it goes with.

#include <string>
#include <string_view>

namespace pilotfish {

std::string_view status_page_html();
// Header lines (each ending "\r\n") for the page: a content security policy that lets run only
// the page's own inline script and style (by their sha256) and fetch only from the admin
// listener itself, no framing, no sniffing.
const std::string& status_page_headers();

}  // namespace pilotfish
