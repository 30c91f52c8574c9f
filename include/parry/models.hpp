// Reference models.
#pragma once

#include "parry/models/reference_cnn.hpp"
