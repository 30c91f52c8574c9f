// Attacks for training and honest evaluation.
#pragma once

#include "parry/attack/apgd.hpp"
#include "parry/attack/attack.hpp"
#include "parry/attack/auto_attack.hpp"
#include "parry/attack/carlini_wagner.hpp"
#include "parry/attack/detector_aware.hpp"
#include "parry/attack/fab.hpp"
#include "parry/attack/fgsm.hpp"
#include "parry/attack/hop_skip_jump.hpp"
#include "parry/attack/oars.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/attack/square.hpp"
