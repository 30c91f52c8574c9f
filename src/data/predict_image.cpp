// data::predict_image: decode, then Guard::predict_decoded.
#include "parry/data/predict_image.hpp"

namespace parry::data {

Response predict_image(const Guard& guard, const std::string& bytes, const RequestContext& context,
                       const ImageLimits& limits) {
  return guard.predict_decoded([&] { return decode_image_for(bytes, guard.input_spec(), limits); }, context);
}

}  // namespace parry::data
