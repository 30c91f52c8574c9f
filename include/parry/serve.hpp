// The serve family: a Guard as an HTTP service (API keys, metrics, server).
#pragma once

#include "parry/serve/api_keys.hpp"
#include "parry/serve/class_names.hpp"
#include "parry/serve/metrics.hpp"
#include "parry/serve/server.hpp"
