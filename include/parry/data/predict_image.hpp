// data::predict_image: a Guard's serving path for encoded images.
//
// Threat model: the bytes come from an untrusted caller. Throttles run before
// anything is decoded; the header's declared size is checked against
// ImageLimits before any pixel is decoded (data::decode_image_for); gates that
// need pixels (QueryMonitor) see the decoded image.
#pragma once

#include <string>

#include "parry/core/guard.hpp"
#include "parry/data/image.hpp"

namespace parry::data {

/// Decodes PNG or JPEG bytes (one image) to the Guard's InputSpec
/// (decode_image_for) and serves them through Guard::predict_decoded.
/// @throws parry::InputError for empty, oversized, corrupt or unsupported bytes.
Response predict_image(const Guard& guard, const std::string& bytes, const RequestContext& context = {},
                       const ImageLimits& limits = {});

}  // namespace parry::data
