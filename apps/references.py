"""Measured reference spectra of the shared XAS data library and what they are.

:data:`CU_REFERENCES`: the Cu K-edge files and the mineral (AMCSD name) and formula of each, used
by the benchmarks to score rankings of real measurements. :data:`CU_MINERALS`: the candidate Cu
minerals they are ranked among (the references' own minerals and Cu-bearing distractors).
"""

from __future__ import annotations

__all__ = ["CU_REFERENCES", "CU_MINERALS", "VALIDATION_REFERENCES"]

#: Cu K-edge file (``xasdatalibrary/Cu``) -> (mineral, formula).
CU_REFERENCES: dict[str, tuple[str, str]] = {
    "Cu_Foil_rt_2016Foils.xdi": ("copper", "Cu"),
    "cu_metal_rt.xdi": ("copper", "Cu"),
    "cu_metal_10K.xdi": ("copper", "Cu"),
    "CuO_tenorite_13K_01.xdi": ("tenorite", "CuO"),
    "Cu2S_13K_01.xdi": ("chalcocite", "Cu2S"),
    "CuS_covellite_13K_01.xdi": ("covellite", "CuS"),
    "Cu_azurite_13K_01.xdi": ("azurite", "Cu3(CO3)2(OH)2"),
}

#: The Cu minerals the references are ranked among (AMCSD names).
CU_MINERALS: tuple[str, ...] = ("copper", "cuprite", "tenorite", "chalcocite", "covellite", "chalcopyrite",
                                "chalcocyanite", "azurite", "digenite", "bornite")

#: Measured references of OTHER elements, with their minerals: the validation set on which the
#: ranking's theory-vs-experiment settings are chosen (FEFF10 spectra of the minerals, computed by
#: ``xas-feff structures`` with the quick cards, against the measurements). File -> (mineral, formula).
VALIDATION_REFERENCES: dict[str, tuple[str, str]] = {
    "Fe/Fe_Foil_rt_2016Foils.xdi": ("iron", "Fe"),
    "Fe/FeO_rt_01.xdi": ("wustite", "FeO"),
    "Fe/Fe2O3_rt_01.xdi": ("hematite", "Fe2O3"),
    "Fe/Fe3O4_rt_01.xdi": ("magnetite", "Fe3O4"),
    "Fe/FeS2_rt_01.xdi": ("pyrite", "FeS2"),
    "Mn/MnO_rt_01.xdi": ("manganosite", "MnO"),
    "Mn/Mn2O3_rt_01.xdi": ("bixbyite", "Mn2O3"),
    "Mn/Mn3O4_rt_01.xdi": ("hausmannite", "Mn3O4"),
    "Mn/MnO2_rt_01.xdi": ("pyrolusite", "MnO2"),
    "Ni/Ni_metal_rt_01.xdi": ("nickel", "Ni"),
    "Co/co_metal_rt.xdi": ("cobalt", "Co"),
    "Cr/cr2o3_rt_001.xdi": ("eskolaite", "Cr2O3"),
    "V/V2O3.xdi": ("karelianite", "V2O3"),
    "V/V2O5.xdi": ("shcherbinaite", "V2O5"),
    "Zn/ZnO.xdi": ("zincite", "ZnO"),
    "Zn/Chorover13BM_Zn_sphalerite_rt_01.xdi": ("sphalerite", "ZnS"),
    "Zn/Zn_foil.xdi": ("zinc", "Zn"),
}
